"""What a grading run writes into its output folder, always atomically (a file is either the
old version or the new one, never half written)::

    OUT/gradebook.csv                  one row per student: exercises, written answers, total
    OUT/feedback/STUDENT.txt           per student: what was tested, what failed, and why
    OUT/results/STUDENT/results.json   per student, in Gradescope's results.json schema
    OUT/written/qN.md, qN.csv          written answers to review, and to fill in (see written)
    OUT/.labkit/run.json               the run's settings, the hidden seed included
    OUT/.labkit/records/STUDENT.json   each student's graded record (what makes runs resumable)

Everything but the records is regenerated from the records and the filled-in written CSVs, so
``labkit grade --merge`` and an interrupted run lose nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit.grading.escape import cap_utf8, csv_cell, name, plain
from labkit.grading.points import written_points
from labkit.grading.scoring import ExerciseResult
from labkit.grading.written import (
    Question,
    parse_points,
    read_scores,
    review_csv,
    review_markdown,
)

STATE = ".labkit"
MAX_STUDENT_BYTES = 1_000_000  # feedback and results.json, each, per student


def read_json_file(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@dataclass
class FileReport:
    """One handed-in file."""

    name: str
    score: float = 0.0
    error: str = ""  # why it could not be graded


@dataclass
class Record:
    """One student's graded submission."""

    student: str
    source: str = ""  # the folder or file name the row came from
    fingerprint: str = ""  # the run's settings and checks (RunConfig.fingerprint)
    input_hash: str = ""  # the handed-in files
    files: list[FileReport] = field(default_factory=list)
    graded_file: str = ""
    exercises: list[ExerciseResult] = field(default_factory=list)
    written: dict[str, str | None] = field(default_factory=dict)  # question id -> answer
    notes: list[str] = field(default_factory=list)  # for the student
    flags: list[str] = field(default_factory=list)  # for the instructor only
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(e.score for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.max_score for e in self.exercises)

    def to_json(self) -> dict:
        data = asdict(self)
        data["exercises"] = [e.to_json() for e in self.exercises]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Record:
        return cls(
            **{
                **data,
                "files": [FileReport(**f) for f in data.get("files", [])],
                "exercises": [ExerciseResult.from_json(e) for e in data.get("exercises", [])],
            }
        )


class Gradebook:
    """The output folder of a grading run."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.state = self.out / STATE
        self.records_dir = self.state / "records"

    # -- state -------------------------------------------------------------------------------
    def create(self) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.out, 0o700)  # the hidden seed and every student's grade live here
        os.chmod(self.state, 0o700)

    def load_run(self) -> dict | None:
        path = self.state / "run.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def save_run(self, data: dict) -> None:
        write_atomic(self.state / "run.json", json.dumps(data, indent=2) + "\n")

    def record_path(self, student: str) -> Path:
        return self.records_dir / f"{student}.json"

    def load_record(self, student: str) -> Record | None:
        path = self.record_path(student)
        try:
            return Record.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            return None  # missing or from an older labkit: grade again

    def save_record(self, record: Record) -> None:
        write_atomic(self.record_path(record.student), json.dumps(record.to_json()) + "\n")

    def records(self) -> list[Record]:
        found = []
        for path in sorted(self.records_dir.glob("*.json")):
            record = self.load_record(path.stem)
            if record is not None:
                found.append(record)
        return found

    # -- outputs -----------------------------------------------------------------------------
    def write_all(
        self,
        lab: str,
        exercises: list[str],
        questions: list[Question],
        points: dict,
        students: list[str] | None = None,
        share_model_answers: bool = False,
    ) -> list[str]:
        """Regenerate every output from the records; returns problems in the written CSVs."""
        records = self.records()
        if students is not None:
            wanted = set(students)
            records = [r for r in records if r.student in wanted]
        scores, problems = self.written_scores(records, questions, points)
        self.write_written(lab, records, questions, points)
        for record in records:
            self.write_student(
                lab, record, questions, points, scores.get(record.student, {}), share_model_answers
            )
        self.write_csv(records, exercises, questions, points, scores)
        return problems

    def written_scores(
        self, records: list[Record], questions: list[Question], points: dict
    ) -> tuple[dict[str, dict[str, tuple[float | None, str]]], list[str]]:
        """student -> question id -> (points or None, comment), from the filled-in CSVs."""
        scores: dict[str, dict[str, tuple[float | None, str]]] = {}
        problems = []
        for q in questions:
            path = self.out / "written" / f"{q.id}.csv"
            maximum = written_points(points, q.id)
            for student, row in read_scores(path).items():
                try:
                    value = parse_points(row["points"], maximum, f"{path.name}, {student}")
                except ValueError as err:
                    problems.append(str(err))
                    value = None
                scores.setdefault(student, {})[q.id] = (value, row["comment"])
        return scores, problems

    def write_written(
        self, lab: str, records: list[Record], questions: list[Question], points: dict
    ) -> None:
        for q in questions:
            rows = [(r.student, r.written.get(q.id)) for r in records]
            csv_path = self.out / "written" / f"{q.id}.csv"
            kept = read_scores(csv_path)
            write_atomic(csv_path, review_csv(rows, kept))
            maximum = written_points(points, q.id)
            write_atomic(
                self.out / "written" / f"{q.id}.md", review_markdown(q, lab, maximum, rows)
            )

    def write_student(
        self,
        lab: str,
        record: Record,
        questions: list[Question],
        points: dict,
        scores: dict[str, tuple[float | None, str]],
        share_model_answers: bool = False,
    ) -> None:
        text = feedback(lab, record, questions, points, scores, share_model_answers)
        write_atomic(
            self.out / "feedback" / f"{record.student}.txt", cap_utf8(text, MAX_STUDENT_BYTES)
        )
        results = results_json(record, questions, points, scores, share_model_answers)
        write_atomic(
            self.out / "results" / record.student / "results.json",
            capped_json(results, MAX_STUDENT_BYTES),
        )

    def write_inventory(self, entries: list[tuple[str, str]]) -> None:
        """Every file and archive entry handed in, and what became of it."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["entry", "became"])
        for entry, became in entries:
            writer.writerow([csv_cell(name(entry, 500)), csv_cell(plain(became, 500))])
        write_atomic(self.out / "inventory.csv", buffer.getvalue())

    def write_csv(
        self,
        records: list[Record],
        exercises: list[str],
        questions: list[Question],
        points: dict,
        scores: dict,
    ) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        written_ids = [q.id for q in questions]
        writer.writerow(
            ["student", "source", "files", "graded_file", *exercises, "exercises", *written_ids]
            + ["total", "max", "status", "flags", "notes"]
        )
        for r in records:
            by_name = {e.function: e for e in r.exercises}
            files = "; ".join(name(f.name) for f in r.files)
            row = [csv_cell(r.student), csv_cell(name(r.source)), csv_cell(files)]
            row.append(csv_cell(name(r.graded_file)))
            row += [_num(by_name[n].score) if n in by_name else "0" for n in exercises]
            row.append(_num(r.score))
            got = scores.get(r.student, {})
            written_total, pending = 0.0, 0
            for q in written_ids:
                value = got.get(q, (None, ""))[0]
                row.append("" if value is None else _num(value))
                written_total += value or 0.0
                pending += value is None
            maximum = r.max_score + sum(written_points(points, q) for q in written_ids)
            row += [_num(r.score + written_total), _num(maximum)]
            status = "written answers to grade" if pending else "complete"
            if not r.graded_file:
                status = "no readable notebook" if r.files else "no notebook"
            notes = [f"{f.name}: {f.error}" for f in r.files if f.error] + r.notes
            row += [
                status,
                csv_cell("; ".join(r.flags)),
                csv_cell(" | ".join(_one_line(n) for n in notes)),
            ]
            writer.writerow(row)
        write_atomic(self.out / "gradebook.csv", buffer.getvalue())


# ----- per student -------------------------------------------------------------------------------
def feedback(
    lab: str,
    record: Record,
    questions: list[Question],
    points: dict,
    scores: dict[str, tuple[float | None, str]],
    share_model_answers: bool = False,
) -> str:
    """The feedback file: for each exercise, what was tested and what failed."""
    lines = [f"Lab {lab}: feedback for {name(record.student)}", "", "Handed in:"]
    for f in record.files:
        if f.error:
            lines.append(_indent(f"- {name(f.name)}: could not be graded. {plain(f.error)}", 2))
        elif f.name == record.graded_file:
            counts = " (this one counts)" if len(record.files) > 1 else ""
            lines.append(f"  - {name(f.name)}: graded{counts}")
        else:
            lines.append(f"  - {name(f.name)}: graded, {_num(f.score)} points, lower than the best")
    if not record.files:
        lines.append("  - no notebook (.ipynb)")
    written_max = sum(written_points(points, q.id) for q in questions)
    written_got = [scores.get(q.id, (None, ""))[0] for q in questions]
    total = record.score + sum(v or 0.0 for v in written_got)
    lines.append(
        f"Score: {_num(total)} / {_num(record.max_score + written_max)}"
        + (" (written answers not graded yet)" if any(v is None for v in written_got) else "")
    )
    lines += [
        "",
        "Each exercise was tested on the notebook's own problem and on hidden tests with other",
        "inputs (seeds, shapes, models); a sub-test counts only if it passes on all of them.",
    ]
    if record.notes:
        lines += ["", "About your notebook:"]
        lines += [_indent("- " + plain(n), 2) for n in record.notes[:50]]
    lines += ["", "Exercises:"]
    for e in record.exercises:
        lines += [""] + exercise_lines(e)
    for q, got in zip(questions, written_got, strict=True):
        comment = scores.get(q.id, (None, ""))[1]
        maximum = written_points(points, q.id)
        mark = "not graded yet" if got is None else f"{_num(got)}/{_num(maximum)}"
        lines += ["", f"[written] Question {q.id[1:]} ({mark})"]
        if not record.written.get(q.id):
            lines.append("    No answer found in your notebook.")
        if comment:
            lines.append(_indent("Comment: " + plain(comment), 4))
        if share_model_answers and q.model_answer:
            lines.append(_indent("A model answer:\n" + plain(q.model_answer, 20_000), 4))
    return "\n".join(lines) + "\n"


def exercise_lines(e: ExerciseResult) -> list[str]:
    head = f"[{e.status}] {e.title} ({_num(e.score)}/{_num(e.max_score)})"
    lines = [head]
    named = [p for p in e.parts if p.name]
    if named and e.status in ("passed", "failed"):
        for p in named:
            mark = "ok" if p.passed else ("not run" if p.passed is None else "FAILED")
            lines.append(f"    - {p.name} ({_num(p.score)}/{_num(p.points)}): {mark}")
    if e.message and e.status != "passed":
        lines.append(_indent(plain(e.message), 4))
    return lines


def results_json(
    record: Record,
    questions: list[Question],
    points: dict,
    scores: dict[str, tuple[float | None, str]],
    share_model_answers: bool = False,
) -> dict:
    """Gradescope's results.json: tests[] (name, number, score, max_score, output,
    visibility), score, execution_time."""
    tests = []
    for i, e in enumerate(record.exercises, start=1):
        number = re.match(r"(?:Exercise\s+)?(\d+(?:\.\d+)*)", e.title)
        tests.append(
            {
                "name": e.title,
                "number": number.group(1) if number else str(i),
                "score": round(e.score, 4),
                "max_score": round(e.max_score, 4),
                "status": "passed" if e.status == "passed" else "failed",
                "output": "\n".join(exercise_lines(e)[1:]) or e.status,
                "visibility": "visible",
            }
        )
    total = record.score
    for q in questions:
        value, comment = scores.get(q.id, (None, ""))
        if value is None and not share_model_answers:
            continue  # graded by hand later; Gradescope shows only what is known
        maximum = written_points(points, q.id)
        output = plain(comment)
        if share_model_answers and q.model_answer:
            output += ("\n\n" if output else "") + "A model answer:\n" + plain(q.model_answer)
        entry = {
            "name": f"Written question {q.id[1:]}",
            "number": q.id,
            "max_score": maximum,
            "output": output,
            "visibility": "visible",
        }
        if value is not None:
            total += value
            entry["score"] = value
        tests.append(entry)
    notes = [f"Graded file: {name(record.graded_file)}"] if record.graded_file else []
    notes += [plain(f.error) for f in record.files if f.error and f.name != record.graded_file]
    notes += [plain(n) for n in record.notes[:50]]
    return {
        "score": round(total, 4),
        "execution_time": int(round(record.seconds)),
        "output": "\n".join(notes),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }


def capped_json(data: dict, max_bytes: int) -> str:
    """results.json under ``max_bytes``: long outputs are cut, longest first."""
    text = json.dumps(data, indent=2) + "\n"
    limit = 20_000
    while len(text.encode()) > max_bytes and limit > 100:
        for test in data.get("tests", []):
            test["output"] = cap_utf8(str(test.get("output", "")), limit)
        data["output"] = cap_utf8(str(data.get("output", "")), limit)
        text = json.dumps(data, indent=2) + "\n"
        limit //= 2
    return text


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _one_line(text: str) -> str:
    return " ".join(text.split())


def merge(out: Path) -> list[str]:
    """``labkit grade --merge OUT``: put the filled-in written scores into every output.

    Returns the problems found in the CSVs (those entries count as not graded yet).
    """
    from labkit.grading.config import GradingError

    book = Gradebook(out)
    run = book.load_run()
    if run is None:
        raise GradingError(f"{out} is not a grading output folder (no {STATE}/run.json).")
    found = [Question(**q) for q in run.get("questions", [])]
    return book.write_all(
        run["lab"],
        run["exercises"],
        found,
        run["config"].get("points", {}),
        share_model_answers=bool(run.get("share_model_answers", False)),
    )
