"""One grading run: ``labkit grade LAB SUBMISSIONS --out OUT``.

For each student (``--jobs`` at a time, with a progress bar and an ETA): read each handed-in
notebook, start a contained worker that defines it (``labkit.grading.sandbox``), run every
check *here* on the notebook's problems and the hidden variants, sending each call of the
student's function to the worker (``labkit.grading.remote``), keep the student's best file, and
save the student's record, feedback and results.json at once. Then write the gradebook and the
written-answer review files.

Before the students, the solution notebook goes through the very same path: it must score
full marks on every hidden variant, or the run stops (a variant the reference fails is the
instructor's problem, never a student's).

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

from labkit.checks.core import Check
from labkit.grading.answers import ComputedAnswers, load_answer_key
from labkit.grading.config import SEED_VARIABLE, GradingError, Lab, Limits, RunConfig, load_lab
from labkit.grading.gradebook import FileReport, Gradebook, Record
from labkit.grading.points import check_names, load_points
from labkit.grading.remote import RemoteRunner
from labkit.grading.sandbox import Sandbox, exposed
from labkit.grading.scoring import (
    CHECK_LOCK,
    ExerciseResult,
    failed_exercise,
    missing_exercise,
    released,
    run_variants,
    score_exercise,
    structure,
)
from labkit.grading.submissions import Submission, discover
from labkit.grading.written import Question, answers, questions
from labkit.notebooks import (
    Notebook,
    NotebookError,
    notebook_definitions,
    python_source,
    read_notebook,
)

# Advice added to a failure message in the grader (the notebook shows the message alone).
ADVICE = {
    "raised NameError": (
        "When grading, your notebook's definitions run as Run All would define them (imports, "
        "functions, classes, constants), but not the cells that compute things (loading the "
        "model, plots). Pass what your function needs as an argument, or define it inside."
    ),
    "raised MemoryError": "The grader allows each submission a limited amount of memory.",
    "can't allocate memory": "The grader allows each submission a limited amount of memory.",
}
# Source patterns worth a look by the instructor (never shown to the student, never scored).
SUSPICIOUS = {
    "reads the caller's frames": r"_getframe|\bf_back\b|\bf_locals\b|inspect\.(stack|currentframe"
    r"|getouterframes)|gc\.get_(objects|referrers)",
    "touches labkit's internals": r"labkit\.(checks\.(core|guards|results|answers)|worker|grading)",
    "replaces torch functions": r"\btorch\.(isclose|allclose|equal|save|load)\s*=",
    "ends or signals processes": r"os\._exit|os\.kill|signal\.|os\.fork|subprocess|setsid",
    "defines __torch_function__": r"__torch_function__",
    "looks for the grader's files": r"\bsolutions\b|\bgrades\b|/proc/|/autograder|\.git\b",
}
BASE_PRELOAD = ["torch", "IPython.core.inputtransformer2", "labkit"]


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
    share_model_answers: bool | None = None  # None: as grading.toml says (default: no)


@dataclass
class Summary:
    graded: int
    skipped: int
    students: int
    seconds: float
    isolation: str
    out: Path
    problems: list[str] = field(default_factory=list)


@dataclass
class Grading:
    """What every slot of a run shares: the lab, the settings and the answers."""

    lab: Lab
    config: RunConfig
    answers: ComputedAnswers


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


def preload_modules(notebook: Path | None) -> list[str]:
    """What a zygote should import before forking: the lab notebook's top-level imports."""
    names = list(BASE_PRELOAD)
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
    return [n for n in dict.fromkeys(names) if not n.startswith("labkit.grading")]


def load_answers(lab: Lab, solution: Path | None, config: dict | None = None) -> ComputedAnswers:
    """The references: the solution notebook's definitions and the lab's answer key."""
    if solution is None:
        raise GradingError(
            f"No solution notebook for lab {lab.number}: the grader computes every expected "
            "value with it. Pass --solutions (the folder that holds it)."
        )
    try:
        namespace = notebook_definitions(solution, module_name=f"solution:{lab.number}")
    except NotebookError as err:
        raise GradingError(str(err)) from err
    return ComputedAnswers(load_answer_key(lab.number), namespace)


# ----- one notebook ------------------------------------------------------------------------------
def _not_run(check: Check, grading: Grading, message: str) -> ExerciseResult:
    with CHECK_LOCK:
        parts = structure(check, grading.answers)
    return failed_exercise(check, parts, grading.config.points, "failed", message)


def grade_notebook(
    notebook: Notebook, sandbox: Sandbox, grading: Grading
) -> tuple[list[ExerciseResult], list[str], float]:
    """Define ``notebook`` in a contained worker and run every check against it:
    (exercises, notes for the student, seconds)."""
    started = time.monotonic()
    limits = grading.config.limits
    cells = [(c.index, c.source) for c in notebook.code]
    deadline = started + limits.seconds_per_submission
    runner: RemoteRunner | None = None
    notes: list[str] = []
    results: list[ExerciseResult] = []
    stopped = ""
    try:
        for check in grading.lab.exercises.values():
            if stopped:
                results.append(_not_run(check, grading, stopped))
                continue
            if time.monotonic() > deadline:
                stopped = (
                    f"Not run: the submission used up its {limits.seconds_per_submission:g} s "
                    "for all exercises."
                )
                results.append(_not_run(check, grading, stopped))
                continue
            if runner is None or runner.ended:
                if runner is not None:
                    runner.close()
                runner = RemoteRunner(sandbox.spawn(), cells, limits.seconds_per_call)
                if not notes:
                    notes = runner.notes or ["(no notes)"]
                if runner.ended:
                    stopped = "Not graded: defining your notebook's functions " + runner.ended + "."
                    results.append(_not_run(check, grading, stopped))
                    continue
            with CHECK_LOCK:
                parts = structure(check, grading.answers)
            if check.name not in runner.defined:
                results.append(
                    missing_exercise(check, parts, grading.config.points, runner.defined)
                )
                continue
            runner.deadline = min(time.monotonic() + limits.seconds_per_exercise, deadline)
            runner.waiting = released
            try:
                variant_results = run_variants(
                    check,
                    runner.function(check.name),
                    grading.config.variants,
                    runner,
                    grading.answers,
                    min(float(check.timeout or 1e9), limits.seconds_per_call),
                    runner.deadline,
                )
            finally:
                runner.waiting = None
            results.append(
                score_exercise(check, parts, variant_results, grading.config.points, ADVICE)
            )
    finally:
        if runner is not None:
            runner.close()
    return results, [n for n in notes if n != "(no notes)"], time.monotonic() - started


def ungraded(grading: Grading, message: str) -> list[ExerciseResult]:
    return [_not_run(check, grading, message) for check in grading.lab.exercises.values()]


def flags_for(notebook: Notebook) -> list[str]:
    code = "\n".join(c.source for c in notebook.code)
    return [what for what, pattern in SUSPICIOUS.items() if re.search(pattern, code)]


def grade_submission(
    sub: Submission, sandbox: Sandbox, grading: Grading, found: list[Question]
) -> Record:
    """Every file of one student; the best one counts."""
    started = time.monotonic()
    record = Record(sub.student, source=sub.source)
    best: tuple[float, list[ExerciseResult], Notebook] | None = None
    best_name = ""
    notes: dict[str, list[str]] = {}
    for f in sub.files:
        try:
            notebook = read_notebook(f.path, f.name)
        except (NotebookError, OSError) as err:
            record.files.append(FileReport(f.name, 0.0, str(err)))
            continue
        exercises, more, _ = grade_notebook(notebook, sandbox, grading)
        total = sum(e.score for e in exercises)
        record.files.append(FileReport(f.name, total))
        notes[f.name] = notebook.notes + more
        record.flags += [flag for flag in flags_for(notebook) if flag not in record.flags]
        if best is None or total > best[0]:
            best, best_name = (total, exercises, notebook), f.name
    for name, why in sub.refused:
        record.files.append(FileReport(name, 0.0, why))
    if best is None:
        errors = [f.error for f in record.files]
        message = errors[0] if errors else "No notebook (.ipynb) was handed in."
        record.exercises = ungraded(grading, "Not graded: " + message)
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
    solution: Path, sandbox: Sandbox, grading: Grading, book: Gradebook, fp: str
) -> None:
    """The solution notebook must score full marks on every variant of this run."""
    digest = hashlib.sha256(solution.read_bytes()).hexdigest()[:16]
    stamp = book.state / "reference.json"
    from labkit.grading.gradebook import read_json_file

    if (read_json_file(stamp) or {}) == {"fingerprint": fp, "solution": digest, "ok": True}:
        return
    exercises, notes, _ = grade_notebook(read_notebook(solution), sandbox, grading)
    failures = [e for e in exercises if e.score < e.max_score - 1e-9]
    if failures:
        details = "\n".join(f"- {e.title}: {e.message or e.status}" for e in failures)
        raise GradingError(
            f"The solution notebook {solution} does not score full marks under the grader with "
            f"this seed (variants {grading.config.variants}). Students would lose points for "
            f"the checks' faults, so grading stopped. Fix the check, or try another --seed:\n"
            f"{details}" + (f"\nNotes: {notes}" if notes else "")
        )
    from labkit.grading.gradebook import write_atomic

    write_atomic(stamp, f'{{"fingerprint": "{fp}", "solution": "{digest}", "ok": true}}\n')


def _protect(paths: list[Path]) -> None:
    """Without namespaces, files are hidden from workers by permissions only: refuse to run
    while a secret is readable by every user."""
    open_ = [p for p in paths if p is not None and Path(p).exists() and exposed(Path(p))]
    if open_:
        raise GradingError(
            "Workers cannot be given their own file system here (no namespaces), and these are "
            "readable by every user, so student code could read them: "
            + ", ".join(str(p) for p in open_)
            + ". Make them private (chmod -R go-rwx on them or a folder above), then grade again."
        )


def grade(options: Options) -> Summary:
    """Grade every submission (see the module docstring)."""
    started = time.monotonic()
    book = Gradebook(options.out)
    lab, config, saved = resolve(options, book)
    book.create()
    solution = _solution_notebook(options, lab)
    fingerprint = config.fingerprint(lab, solution)
    if options.config is not None:
        found = [Question(**q) for q in options.config.get("questions", [])]
        preload = list(options.config.get("preload", BASE_PRELOAD))
    else:
        found = questions(solution) if solution else []
        lab_notebook = Path(options.labs) / lab.notebook
        preload = preload_modules(lab_notebook if lab_notebook.exists() else solution)
    grading = Grading(lab, config, load_answers(lab, solution))
    run_data = {
        "lab": lab.number,
        "checks": lab.checks_module,
        "notebook": lab.notebook,
        "config": config.to_json(),
        "fingerprint": fingerprint,
        "exercises": list(lab.exercises),
        "questions": [q.__dict__ for q in found],
        "preload": preload,
        "share_model_answers": _share_model_answers(options),
    }
    book.save_run(run_data)

    unpack_to = book.state / "unpacked"
    inventory: list[tuple[str, str]] = []
    subs = discover(options.submissions, unpack_to, single=options.single, inventory=inventory)
    book.write_inventory(inventory)
    pending = []
    for sub in subs:
        record = None if options.force else book.load_record(sub.student)
        if (
            record is None
            or record.fingerprint != fingerprint
            or record.input_hash != sub.input_hash()
        ):
            pending.append(sub)
    need_reference = options.check_reference and solution is not None
    n_slots = max(1, min(options.jobs, len(pending))) if pending or need_reference else 0
    if options.pool is not None:
        sandboxes = options.pool[: max(n_slots, 1)] if n_slots else []
        for sandbox in sandboxes:
            sandbox.limits = config.limits
    else:
        sandboxes = [Sandbox(config.limits, slot=k, preload=preload) for k in range(n_slots)]
    isolation = ""
    try:
        start_all([s for s in sandboxes if s.process is None])
        if sandboxes:
            iso = sandboxes[0].isolation
            isolation = iso.describe() if iso else ""
            if iso is not None and not iso.namespaces:
                from labkit.grading.config import PACKAGE_ROOT

                secrets_ = [book.out, solution, Path(options.solutions), PACKAGE_ROOT / "grading"]
                if not options.single:  # a class: nobody may read the others' files
                    secrets_.append(Path(options.submissions))
                _protect([p for p in secrets_ if p is not None])
            if options.progress:
                print(f"Sandbox: {isolation}.", file=sys.stderr)
        if need_reference:
            check_reference(solution, sandboxes[0], grading, book, fingerprint)
        _grade_all(pending, sandboxes, grading, found, book, fingerprint, options)
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
            share_model_answers=run_data["share_model_answers"],
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


def _share_model_answers(options: Options) -> bool:
    if options.share_model_answers is not None:
        return options.share_model_answers
    from labkit.grading.points import load_settings

    return bool(load_settings(options.points_file).get("share_model_answers", False))


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
    grading: Grading,
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
        desc=f"Grading lab {grading.lab.number}",
        disable=not options.progress,
        file=sys.stderr,
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    share = _share_model_answers(options)

    def slot(sandbox: Sandbox) -> None:
        while not stop.is_set():
            try:
                sub = todo.get_nowait()
            except queue.Empty:
                return
            try:
                record = grade_submission(sub, sandbox, grading, found)
                record.fingerprint, record.input_hash = fingerprint, sub.input_hash()
                book.save_record(record)
                book.write_student(
                    grading.lab.number, record, found, grading.config.points, {}, share
                )
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
