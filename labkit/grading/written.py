"""Written answers: questions whose answer is prose, graded by the instructor.

A question is a markdown cell of the solution notebook with a ``<!-- BEGIN SOLUTION -->``
region; students see the cell with "*Your answer here.*" and write their answer in it. For each
question the grader writes, under ``written/`` in the output folder:

* ``qN.md``: the question, the model answer and every student's answer, to read;
* ``qN.csv``: one row per student (student, points, comment, answer). Fill in ``points`` (and
  ``comment`` if you like), then ``labkit grade --merge OUT`` puts them into the gradebook, the
  feedback files and results.json. Grading again keeps what you filled in.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from labkit.build import MARKDOWN_STUB, strip_markdown_solution
from labkit.grading.escape import csv_cell, markdown_block
from labkit.notebooks import MARKDOWN_REGION, Cell, markdown_regions, read_nbformat

CSV_FIELDS = ("student", "points", "comment", "answer")


@dataclass
class Question:
    id: str  # q1, q2, ... in notebook order
    prompt: str  # the text just before the answer cell
    model_answer: str
    stub: str  # the answer cell as students get it
    anchor: str  # the cell before the answer cell, as students get it


def questions(solution: Path) -> list[Question]:
    """The written questions of a solution notebook."""
    notebook = read_nbformat(solution)
    found = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown" or not MARKDOWN_REGION.search(cell.source):
            continue
        answer = "\n".join(text.strip() for text in markdown_regions(cell.source))
        previous = notebook.cells[i - 1] if i else None
        prompt = ""
        for earlier in reversed(notebook.cells[:i]):
            if earlier.cell_type == "markdown":
                prompt = earlier.source.strip().split("\n\n")[-1]
                break
        stub = strip_markdown_solution(cell.source)
        anchor = previous.source if previous is not None else ""
        found.append(Question(f"q{len(found) + 1}", prompt, answer, stub, anchor))
    return found


def _norm(text: str) -> str:
    return " ".join(text.split())


def answer_of(cells: list[Cell], question: Question, occurrence: int) -> str | None:
    """The student's answer to ``question`` (None: no answer found, or the stub untouched).

    The answer cell is the first markdown cell after the cell that precedes it in the lab (so
    added cells elsewhere do not matter); failing that, the ``occurrence``-th markdown cell
    that still holds the stub's fixed text.
    """
    anchor = _norm(question.anchor)
    cell = None
    if anchor:
        for i, candidate in enumerate(cells):
            if _norm(candidate.source) == anchor:
                cell = next((c for c in cells[i + 1 :] if c.kind == "markdown"), None)
                break
    if cell is None:
        prefix = _norm(question.stub.replace(MARKDOWN_STUB, ""))
        matches = [
            c for c in cells if c.kind == "markdown" and (not prefix or prefix in _norm(c.source))
        ]
        if prefix and len(matches) > occurrence:
            cell = matches[occurrence]
    if cell is None:
        return None
    text = cell.source
    for fixed in question.stub.split(MARKDOWN_STUB):
        if fixed.strip():
            text = text.replace(fixed.strip(), "", 1)
    text = text.replace(MARKDOWN_STUB, "")
    text = text.replace("<!-- BEGIN SOLUTION -->", "").replace("<!-- END SOLUTION -->", "")
    return text.strip() or None


def answers(cells: list[Cell], found: list[Question]) -> dict[str, str | None]:
    seen: dict[str, int] = {}
    result = {}
    for q in found:
        key = _norm(q.stub)
        result[q.id] = answer_of(cells, q, seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
    return result


# ----- review files ------------------------------------------------------------------------------
def read_scores(path: Path) -> dict[str, dict[str, str]]:
    """What the instructor filled in: student -> {"points": ..., "comment": ...}."""
    if not path.exists():
        return {}
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    return {
        row["student"]: {
            "points": (row.get("points") or "").strip(),
            "comment": row.get("comment") or "",
        }
        for row in rows
        if row.get("student")
    }


def parse_points(text: str, maximum: float, where: str) -> float | None:
    """A filled-in score: '' -> None (not graded yet); otherwise a number in [0, maximum]."""
    if not text:
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        raise ValueError(f"{where}: '{text}' is not a number of points.") from None
    if not 0 <= value <= maximum:
        raise ValueError(f"{where}: {value:g} points is outside 0..{maximum:g}.")
    return value


def review_markdown(question: Question, lab: str, maximum: float, rows: list[tuple]) -> str:
    """``rows``: (student, answer) pairs."""
    lines = [
        f"# Lab {lab}, written question {question.id[1:]} ({maximum:g} point"
        + ("s)" if maximum != 1 else ")"),
        "",
        "> " + question.prompt.replace("\n", "\n> "),
        "",
        "## Model answer (instructor only)",
        "",
        question.model_answer,
        "",
        f"## Answers ({sum(1 for _, a in rows if a)} of {len(rows)} students answered)",
        "",
        f"Grade them in {question.id}.csv (column 'points'), then run `labkit grade --merge`.",
    ]
    for student, answer in rows:
        lines += ["", f"### {student}", "", markdown_block(answer) if answer else "*(no answer)*"]
    return "\n".join(lines) + "\n"


def review_csv(rows: list[tuple[str, str | None]], kept: dict[str, dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    for student, answer in rows:
        old = kept.get(student, {})
        writer.writerow(
            [
                student,
                old.get("points", ""),
                old.get("comment", ""),
                csv_cell(_one_line(answer or "")),
            ]
        )
    return buffer.getvalue()


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " / ", text.strip())
