"""One grading run: ``labkit grade LAB SUBMISSIONS --out OUT``.

For each student (``--jobs`` at a time, with a progress bar and an ETA): read each handed-in
notebook, run it in a sandboxed worker, score the recordings here, keep the student's best
file, and save the student's record, feedback and results.json at once. Then write the
gradebook and the written-answer review files.

Before the students, the solution notebook goes through the very same path, once per seed: it
must score full marks on every hidden variant, or the run stops (a variant the reference fails
is the instructor's problem, never a student's).

A run is resumable: a student whose record matches their files and the run's settings is not
graded again (``force`` regrades everyone), and every file is written atomically.
"""

from __future__ import annotations

import ast
import hashlib
import os
import queue
import re
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.grading.config import SEED_VARIABLE, GradingError, Lab, Limits, RunConfig, load_lab
from labkit.grading.gradebook import FileReport, Gradebook, Record
from labkit.grading.points import check_names, load_points
from labkit.grading.sandbox import Sandbox, read_capped, read_json
from labkit.grading.scoring import ExerciseResult, load_recording, score_exercise
from labkit.grading.submissions import (
    Notebook,
    NotebookError,
    Submission,
    discover,
    read_notebook,
)
from labkit.grading.worker import python_source
from labkit.grading.written import Question, answers, questions

# Advice added to a failure message in the grader (the notebook shows the message alone).
ADVICE = {
    "raised NameError": (
        "When grading, only your notebook's imports, functions, classes, UPPER_CASE constants "
        "and simple assignments run, not cells that compute things (loading the model, plots). "
        "Pass what your function needs as an argument, or define it inside the function."
    ),
    "raised MemoryError": "The grader allows each submission a limited amount of memory.",
    "can't allocate memory": "The grader allows each submission a limited amount of memory.",
}
# Source patterns worth a look by the instructor (never shown to the student, never scored).
SUSPICIOUS = {
    "reads the caller's frames": r"_getframe|\bf_back\b|\bf_locals\b|inspect\.(stack|currentframe"
    r"|getouterframes)|gc\.get_(objects|referrers)",
    "touches labkit's checks": r"labkit\.checks\.(core|transport|guards|results)|\bRecorder\b",
    "replaces torch functions": r"\btorch\.(isclose|allclose|equal|save|load)\s*=",
    "ends the process": r"os\._exit|os\.kill|signal\.",
    "defines __torch_function__": r"__torch_function__",
    "looks for the grader's files": r"\bsolutions\b|\bgrades\b|__file__|/proc/|/autograder",
}
BASE_PRELOAD = ["torch", "IPython.core.inputtransformer2", "labkit", "labkit.grading.worker"]


@dataclass
class Options:
    lab: str
    submissions: Path
    out: Path
    jobs: int = 1
    force: bool = False
    seed: str | None = None
    hidden: int = 2
    limits: Limits = field(default_factory=Limits)
    points_file: Path | None = None
    solutions: Path = Path("solutions")
    labs: Path = Path("labs")
    check_reference: bool = True
    progress: bool = True
    single: bool = False  # the whole submissions folder is one student (Gradescope)
    config: dict | None = None  # a saved run configuration (Gradescope's zip carries one)
    checks: str = ""  # another checks module than labkit.checks.labNN (tests)
    pool: list[Sandbox] | None = None  # started sandboxes to use (and leave running)
    hide: list[Path] = field(default_factory=list)  # more folders workers must not see


@dataclass
class Summary:
    graded: int
    skipped: int
    students: int
    seconds: float
    isolation: str
    out: Path
    problems: list[str] = field(default_factory=list)


# ----- settings ----------------------------------------------------------------------------------
def resolve(options: Options, book: Gradebook) -> tuple[Lab, RunConfig, dict]:
    """The lab, the run's settings (seed, points...) and the saved run data."""
    saved = options.config or book.load_run() or {}
    lab = load_lab(
        options.lab,
        [options.solutions, options.labs],
        notebook=saved.get("notebook", ""),
        module=options.checks or saved.get("checks", ""),
    )
    seed = options.seed or os.environ.get(SEED_VARIABLE) or saved.get("config", {}).get("seed")
    old_seed = saved.get("config", {}).get("seed")
    if old_seed and seed != old_seed and not options.force:
        raise GradingError(
            f"{book.out} was graded with another seed. Grading with a new one would mix two "
            "sets of hidden tests in one gradebook: pass --force to regrade everyone, or use a "
            "new --out folder."
        )
    if options.config is not None:
        config = RunConfig.from_json(options.config["config"])
        return lab, config, saved
    points = load_points(options.points_file, lab.number)
    unknown = check_names(points, list(lab.exercises))
    if unknown:
        raise GradingError(
            f"The points file names exercises that lab {lab.number} does not have: "
            f"{', '.join(unknown)}. Known: {', '.join(lab.exercises)}."
        )
    config = RunConfig(
        lab=lab.number,
        seed=seed or secrets.token_hex(8),
        hidden=options.hidden,
        limits=options.limits,
        points=points,
    )
    return lab, config, saved


def preload_modules(lab: Lab, notebook: Path | None) -> list[str]:
    """What a worker should import before forking: the lab notebook's top-level imports."""
    names = [*BASE_PRELOAD, lab.checks_module]
    if notebook is not None and notebook.exists():
        for cell in read_notebook(notebook).code:
            try:
                tree = ast.parse(python_source(cell.source) or "")
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.Import):
                    names += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.append(node.module)
    return list(dict.fromkeys(names))


# ----- one notebook ------------------------------------------------------------------------------
def grade_notebook(
    notebook: Notebook, sandbox: Sandbox, lab: Lab, config: RunConfig
) -> tuple[list[ExerciseResult], list[str], float]:
    """Run one notebook in ``sandbox`` and score it: (exercises, notes, seconds)."""
    names = list(lab.exercises)
    variants = config.variants
    folder = sandbox.new_folder()
    try:
        job = {
            "checks": lab.checks_module,
            "cells": [[c.index, c.source] for c in notebook.code],
            "exercises": names,
            "variants": variants,
            "seconds_per_call": config.limits.seconds_per_call,
        }
        report = sandbox.run(job, folder)
        definitions = read_json(folder / "definitions.json") or {}
        notes = [str(n) for n in definitions.get("notes", [])][:50]
        if report.definitions_failed:
            notes.append(
                "Defining your notebook's functions stopped the grader: "
                + report.definitions_failed
            )
        results = []
        for i, name in enumerate(names):
            info = read_json(folder / f"exercise-{i}.json")
            if info is not None and info.get("name") != name:
                info = None
            stop = report.stops.get(i)
            if report.definitions_failed:
                stop = (0, "Not graded: " + report.definitions_failed)
            elif 0 <= report.not_run_from <= i:
                stop = (0, report.not_run)
            recordings = {}
            for j in range(len(variants)):
                outcomes, problem = load_recording(folder / f"exercise-{i}-{j}.pt")
                if outcomes is not None:
                    recordings[j] = outcomes
                elif problem != "missing":
                    stop = stop or (j, problem)
            results.append(
                score_exercise(
                    lab.exercises[name],
                    name,
                    variants,
                    info,
                    recordings,
                    stop,
                    config.points,
                    ADVICE,
                )
            )
        output = read_capped(folder / "output.txt", 1 << 16)
        if output and b"Traceback" in output and report.definitions_failed:
            notes.append(
                "(The grader's log ends with: "
                + output.decode(errors="replace").strip().splitlines()[-1][:300]
                + ")"
            )
        return results, notes, report.seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ungraded(lab: Lab, config: RunConfig, message: str) -> list[ExerciseResult]:
    return [
        score_exercise(check, name, config.variants, None, {}, (0, message), config.points)
        for name, check in lab.exercises.items()
    ]


def flags_for(notebook: Notebook) -> list[str]:
    code = "\n".join(c.source for c in notebook.code)
    return [what for what, pattern in SUSPICIOUS.items() if re.search(pattern, code)]


def grade_submission(
    sub: Submission,
    sandbox: Sandbox,
    lab: Lab,
    config: RunConfig,
    found: list[Question],
) -> Record:
    """Every file of one student; the best one counts."""
    started = time.monotonic()
    record = Record(sub.student)
    best: tuple[float, list[ExerciseResult], Notebook] | None = None
    best_name = ""
    notes: dict[str, list[str]] = {}
    for f in sub.files:
        try:
            notebook = read_notebook(f.path, f.name)
        except (NotebookError, OSError) as err:
            record.files.append(FileReport(f.name, 0.0, str(err)))
            continue
        exercises, more, _ = grade_notebook(notebook, sandbox, lab, config)
        total = sum(e.score for e in exercises)
        record.files.append(FileReport(f.name, total))
        notes[f.name] = notebook.notes + more
        record.flags += [flag for flag in flags_for(notebook) if flag not in record.flags]
        if best is None or total > best[0]:
            best, best_name = (total, exercises, notebook), f.name
    if best is None:
        errors = [f.error for f in record.files]
        message = errors[0] if errors else "No notebook (.ipynb) was handed in."
        record.exercises = ungraded(lab, config, "Not graded: " + message)
        record.notes = [] if errors else [message]
    else:
        record.graded_file = best_name
        record.exercises = best[1]
        record.notes = notes[best_name]
        record.written = answers(best[2].cells, found)
        if len(sub.files) > 1:
            record.notes.insert(
                0,
                f"You handed in {len(sub.files)} notebooks; each was graded and the best one "
                f"({best_name}) counts.",
            )
    if sub.others:
        record.notes.append("Not graded (not notebooks): " + ", ".join(sub.others[:20]))
    record.seconds = time.monotonic() - started
    return record


# ----- the run -----------------------------------------------------------------------------------
def _solution_notebook(options: Options, lab: Lab) -> Path | None:
    path = Path(options.solutions) / lab.notebook
    return path if path.exists() else None


def check_reference(
    solution: Path, sandbox: Sandbox, lab: Lab, config: RunConfig, book: Gradebook, fp: str
) -> None:
    """The solution notebook must score full marks on every variant of this run."""
    digest = hashlib.sha256(solution.read_bytes()).hexdigest()[:16]
    stamp = book.state / "reference.json"
    if (read_json(stamp) or {}) == {"fingerprint": fp, "solution": digest, "ok": True}:
        return
    exercises, notes, _ = grade_notebook(read_notebook(solution), sandbox, lab, config)
    failures = [e for e in exercises if e.score < e.max_score - 1e-9]
    if failures:
        details = "\n".join(f"- {e.title}: {e.message or e.status}" for e in failures)
        raise GradingError(
            f"The solution notebook {solution} does not score full marks under the grader with "
            f"this seed (variants {config.variants}). Students would lose points for the "
            f"checks' faults, so grading stopped. Fix the check, or try another --seed:\n"
            f"{details}" + (f"\nNotes: {notes}" if notes else "")
        )
    from labkit.grading.gradebook import write_atomic

    write_atomic(stamp, f'{{"fingerprint": "{fp}", "solution": "{digest}", "ok": true}}\n')


def grade(options: Options) -> Summary:
    """Grade every submission (see the module docstring)."""
    started = time.monotonic()
    book = Gradebook(options.out)
    lab, config, saved = resolve(options, book)
    book.create()
    fingerprint = config.fingerprint(lab)
    solution = _solution_notebook(options, lab)
    if options.config is not None:
        found = [Question(**q) for q in options.config.get("questions", [])]
        preload = list(options.config.get("preload", BASE_PRELOAD))
    else:
        if solution is None and options.progress:
            print(
                f"No solution notebook {Path(options.solutions) / lab.notebook}: the check that "
                "the solution scores full marks, and the written answers, are skipped (pass "
                "--solutions).",
                file=sys.stderr,
            )
        found = questions(solution) if solution else []
        lab_notebook = Path(options.labs) / lab.notebook
        preload = preload_modules(lab, lab_notebook if lab_notebook.exists() else solution)
    run_data = {
        "lab": lab.number,
        "checks": lab.checks_module,
        "notebook": lab.notebook,
        "config": config.to_json(),
        "fingerprint": fingerprint,
        "exercises": list(lab.exercises),
        "questions": [q.__dict__ for q in found],
        "preload": preload,
    }
    book.save_run(run_data)

    unpack_to = book.state / "unpacked"
    subs = discover(options.submissions, unpack_to, single=options.single)
    pending = []
    for sub in subs:
        record = None if options.force else book.load_record(sub.student)
        if (
            record is None
            or record.fingerprint != fingerprint
            or record.input_hash != sub.input_hash()
        ):
            pending.append(sub)
    hide = [book.out.resolve(), Path(options.submissions).resolve()]
    if not Path(options.submissions).is_dir():
        hide[1] = Path(options.submissions).resolve().parent
    hide += [Path(options.solutions).resolve(), *(Path(p).resolve() for p in options.hide)]
    need_reference = options.check_reference and solution is not None
    n_slots = max(1, min(options.jobs, len(pending))) if pending or need_reference else 0
    if options.pool is not None:
        sandboxes = options.pool[: max(n_slots, 1)] if n_slots else []
        for sandbox in sandboxes:
            sandbox.limits, sandbox.hide = config.limits, [str(p) for p in hide]
    else:
        sandboxes = [
            Sandbox(lab.checks_module, config.limits, slot=k, preload=preload, hide=hide)
            for k in range(n_slots)
        ]
    isolation = ""
    try:
        start_all([s for s in sandboxes if s.process is None])
        if sandboxes:
            isolation = sandboxes[0].isolation.describe() if sandboxes[0].isolation else ""
            if options.progress:
                print(f"Sandbox: {isolation}.", file=sys.stderr)
        if need_reference:
            check_reference(solution, sandboxes[0], lab, config, book, fingerprint)
        _grade_all(pending, sandboxes, lab, config, found, book, fingerprint, options)
    finally:
        if options.pool is None:
            for sandbox in sandboxes:
                sandbox.close()
        shutil.rmtree(unpack_to, ignore_errors=True)
        problems = book.write_all(
            lab.number,
            list(lab.exercises),
            found,
            config.points,
            students=[s.student for s in subs] if options.single else None,
        )
    return Summary(
        graded=len(pending),
        skipped=len(subs) - len(pending),
        students=len(subs),
        seconds=time.monotonic() - started,
        isolation=isolation,
        out=book.out,
        problems=problems,
    )


def start_all(sandboxes: list[Sandbox]) -> None:
    """Start the zygotes side by side (each imports torch: the slow part)."""
    errors: list[BaseException] = []

    def start(sandbox: Sandbox) -> None:
        try:
            sandbox.start()
        except BaseException as err:  # noqa: BLE001 -- re-raised below
            errors.append(err)

    threads = [threading.Thread(target=start, args=(s,)) for s in sandboxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _grade_all(
    pending: list[Submission],
    sandboxes: list[Sandbox],
    lab: Lab,
    config: RunConfig,
    found: list[Question],
    book: Gradebook,
    fingerprint: str,
    options: Options,
) -> None:
    if not pending:
        return
    from tqdm.auto import tqdm

    todo: queue.Queue[Submission] = queue.Queue()
    for sub in pending:
        todo.put(sub)
    bar = tqdm(
        total=len(pending),
        unit="submission",
        desc=f"Grading lab {lab.number}",
        disable=not options.progress,
        file=sys.stderr,
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def slot(sandbox: Sandbox) -> None:
        while not stop.is_set():
            try:
                sub = todo.get_nowait()
            except queue.Empty:
                return
            try:
                record = grade_submission(sub, sandbox, lab, config, found)
                record.fingerprint, record.input_hash = fingerprint, sub.input_hash()
                book.save_record(record)
                book.write_student(lab.number, record, found, config.points, {})
            except BaseException as err:  # noqa: BLE001 -- a grader bug: stop the run
                errors.append(err)
                stop.set()
                return
            bar.update(1)

    threads = [threading.Thread(target=slot, args=(s,), daemon=True) for s in sandboxes]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.2)
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        raise
    bar.close()
    if errors:
        raise errors[0]
