"""labkit grade: hidden tests, sandboxed workers, a gradebook that survives anything a student
hands in.

One class of lab 01 submissions, hostile ones included, is graded once (two workers, tiny time
limits); each test then reads what that run wrote. The other tests reuse the same started
workers, so the module pays for importing torch in a worker only twice.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import grading_fixture_lab
import nbformat
import pytest

from labkit.grading.config import GradingError, Limits, load_lab
from labkit.grading.gradebook import Gradebook, merge
from labkit.grading.grader import Options, grade, preload_modules
from labkit.grading.sandbox import Sandbox
from labkit.grading.written import questions
from labkit.release import leaks

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attribution.ipynb"
LAB = ROOT / "labs" / "01_attribution.ipynb"
LIMITS = Limits(
    memory_mb=4096,
    seconds_per_call=3.0,
    seconds_per_exercise=8.0,
    seconds_per_submission=120.0,
)
EXERCISES = list(load_lab("01").exercises)
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux"),
]


# ----- a class of submissions ------------------------------------------------------------------
def solution() -> nbformat.NotebookNode:
    return nbformat.read(SOLUTION, as_version=4)


def replace_function(nb: nbformat.NotebookNode, name: str, source: str) -> None:
    """Replace the cell that defines ``name`` by ``source``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and f"def {name}(" in cell.source:
            cell.source = source
            return
    raise AssertionError(f"no cell defines {name}")


def save(nb: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


LOOPS = {
    "saliency": "def saliency(f, embeddings):\n    while True:\n        pass\n",
    "input_x_gradient": (
        "import signal\n\n\ndef input_x_gradient(f, embeddings):\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # no alarm can stop it\n"
        "    while True:\n        pass\n"
    ),
}
EXITS = {
    "saliency": "import os\n\n\ndef saliency(f, embeddings):\n    os._exit(3)\n",
    "input_x_gradient": "import sys\n\n\ndef input_x_gradient(f, embeddings):\n    sys.exit(1)\n",
    "integrated_gradients": (
        "def integrated_gradients(f, embeddings, baseline, n_steps=32):\n"
        "    raise KeyboardInterrupt\n"
    ),
}
MEMORY = {
    "saliency": "def saliency(f, embeddings):\n    return bytearray(64 * 2**30)\n",
    "input_x_gradient": (
        "import torch\n\n\ndef input_x_gradient(f, embeddings):\n    chunks = []\n"
        "    while True:\n        chunks.append(torch.empty(2**28))  # 1 GB at a time\n"
    ),
}
# Every exercise returns something wrong, after switching off every comparison it can reach.
PATCHER = """\
import torch
import labkit.checks.core as core

class _Patch:  # runs while the notebook's definitions are made
    torch.isclose = lambda *a, **k: torch.ones((), dtype=torch.bool)
    core.Checker.close = lambda self, got, *a, **k: got


def _patch_everything():
    torch.allclose = lambda *a, **k: True
    torch.equal = lambda *a, **k: True
    core.Checker.true = lambda *a, **k: None
    core.Checker.close = lambda self, got, *a, **k: got
"""
LIAR = """\
import torch


class LyingTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.isclose, torch.allclose, torch.equal, torch.Tensor.__eq__):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def saliency(f, embeddings):
    return torch.zeros(embeddings.shape[1]).as_subclass(LyingTensor)
"""
SNOOP = """\
import pathlib
import labkit

OUT = {out!r}


def saliency(f, embeddings):
    # Read the instructor's solution next to the labkit package; cheat only if that worked.
    solution = pathlib.Path(labkit.__file__).resolve().parents[1] / "solutions"
    text = (solution / "01_attribution.ipynb").read_text()
    x = embeddings.detach().clone().requires_grad_(True)
    (grad,) = __import__("torch").autograd.grad(f(x).sum(), x)
    return grad[0].norm(dim=-1) if text else None


def input_x_gradient(f, embeddings):
    pathlib.Path(OUT, "pwned.txt").write_text("I was here")
    pathlib.Path(OUT, "gradebook.csv").write_text("student,total\\nsnoop,1000\\n")
    x = embeddings.detach().clone().requires_grad_(True)
    (grad,) = __import__("torch").autograd.grad(f(x).sum(), x)
    return (x * grad)[0].sum(dim=-1)
"""
PRINTS = """\
import torch

printed = []


def saliency(f, embeddings):
    if not printed:  # once: 10 MB of output
        printed.append(True)
        print("x" * (10 * 2**20))
    x = embeddings.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad[0].norm(dim=-1)
"""


def make_class(folder: Path, out: Path) -> None:
    """Every kind of submission the grader must survive, one student each."""
    save(solution(), folder / "correct" / "lab01.ipynb")
    shutil.copy(LAB, folder / "unattempted.ipynb")
    for student, functions in [("loop", LOOPS), ("exits", EXITS), ("memory", MEMORY)]:
        nb = solution()
        for name, source in functions.items():
            replace_function(nb, name, source)
        save(nb, folder / student / "lab.ipynb")

    nb = nbformat.read(LAB, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PATCHER))
    for name in EXERCISES:  # each returns garbage after patching
        nb.cells.append(
            nbformat.v4.new_code_cell(
                f"def {name}(*args, **kwargs):\n    _patch_everything()\n"
                "    return torch.zeros(3)\n"
            )
        )
    save(nb, folder / "monkeypatch" / "lab.ipynb")

    nb = solution()
    replace_function(nb, "saliency", LIAR)
    save(nb, folder / "liar" / "lab.ipynb")

    nb = solution()
    replace_function(
        nb, "saliency", solution_cell("saliency").replace("def saliency(", "def salience(")
    )
    replace_function(nb, "input_x_gradient", "# deleted\n")
    replace_function(nb, "integrated_gradients", "integrated_gradients = 42\n")
    save(nb, folder / "renamed" / "lab.ipynb")

    nb = solution()
    replace_function(nb, "saliency", solution_cell("saliency") + "\n\nx = (  # never closed\n")
    save(nb, folder / "syntax" / "lab.ipynb")

    (folder / "badjson").mkdir()
    (folder / "badjson" / "lab.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')

    (folder / "v3").mkdir()
    (folder / "v3" / "lab.ipynb").write_text(nbformat.writes(nbformat.convert(solution(), 3)))

    nb = solution()
    nb.cells[2].source += "\n# café, naïve: Windows-1252 text\n"
    (folder / "latin1").mkdir()
    text = nbformat.writes(nb).encode("cp1252", errors="replace")  # "?" for what it lacks
    (folder / "latin1" / "lab.ipynb").write_bytes(text)

    nb = solution()
    nb.cells[4].outputs = [nbformat.v4.new_output("stream", text="y" * (50 * 2**20))]
    save(nb, folder / "bigoutput" / "lab.ipynb")

    nb = solution()
    for name in ("saliency", "input_x_gradient"):
        replace_function(nb, name, "# moved below\n")
    nb.cells.append(nbformat.v4.new_code_cell(SNOOP.format(out=str(out.resolve()))))
    save(nb, folder / "snoop" / "lab.ipynb")

    nb = solution()
    replace_function(nb, "saliency", PRINTS)
    save(nb, folder / "prints" / "lab.ipynb")

    shutil.copy(LAB, save(solution(), folder / "twofiles" / "final.ipynb").parent / "draft.ipynb")
    shutil.copy(LAB, folder / "dave_123_456_lab.ipynb")  # Canvas: one student, two files
    save(solution(), folder / "dave_123_789_lab-1.ipynb")

    (folder / "pdfonly").mkdir()
    (folder / "pdfonly" / "report.pdf").write_bytes(b"%PDF-1.4 not a notebook")


def solution_cell(name: str) -> str:
    return next(c.source for c in solution().cells if f"def {name}(" in c.source)


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    """Two started workers, shared by every test here."""
    lab = load_lab("01")
    preload = []  # what every lab's notebook imports, so that no worker imports it again
    for notebook in sorted((ROOT / "labs").glob("*.ipynb")):
        if (ROOT / "labkit" / "checks" / f"lab{notebook.name[:2]}.py").exists():
            preload += preload_modules(load_lab(notebook.name[:2]), notebook)
    preload = list(dict.fromkeys(preload))
    sandboxes = [Sandbox(lab.checks_module, LIMITS, slot=k, preload=preload) for k in range(2)]
    from labkit.grading.grader import start_all

    start_all(sandboxes)
    yield sandboxes
    for sandbox in sandboxes:
        sandbox.close()


@pytest.fixture(scope="module")
def graded(pool, tmp_path_factory):
    """The class graded once: (output folder, records by student, gradebook rows)."""
    base = tmp_path_factory.mktemp("class")
    out = base / "grades"
    make_class(base / "submissions", out)
    summary = grade(
        Options(
            lab="01",
            submissions=base / "submissions",
            out=out,
            jobs=2,
            seed="test-seed",
            limits=LIMITS,
            solutions=ROOT / "solutions",
            labs=ROOT / "labs",
            progress=False,
            pool=pool,
        )
    )
    book = Gradebook(out)
    records = {r.student: r for r in book.records()}
    with open(out / "gradebook.csv", newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    return out, records, rows, summary


def exercise(records, student: str, name: str):
    return next(e for e in records[student].exercises if e.function == name)


def full_marks(records, student: str, but: tuple[str, ...] = ()) -> None:
    for e in records[student].exercises:
        if e.function not in but:
            assert e.status == "passed" and e.score == e.max_score, (student, e)


# ----- the class -------------------------------------------------------------------------------
def test_every_student_has_a_row_feedback_and_results(graded) -> None:
    out, records, rows, summary = graded
    students = {
        "correct", "unattempted", "loop", "exits", "memory", "monkeypatch", "liar", "renamed",
        "syntax", "badjson", "v3", "latin1", "bigoutput", "snoop", "prints", "twofiles",
        "dave_123", "pdfonly",
    }  # fmt: skip
    assert set(rows) == students and set(records) == students
    assert summary.graded == len(students)
    for student in students:
        assert (out / "feedback" / f"{student}.txt").read_text().startswith("Lab 01: feedback")
        result = json.loads((out / "results" / student / "results.json").read_text())
        assert {"score", "execution_time", "tests"} <= set(result)
        for test in result["tests"]:
            assert {"name", "number", "score", "max_score", "output", "visibility"} <= set(test)
    assert list(rows["correct"])[:3] == ["student", "graded_file", "saliency"]


def test_the_solution_notebook_scores_full_marks(graded) -> None:
    _, records, rows, _ = graded
    full_marks(records, "correct")
    assert float(rows["correct"]["exercises"]) == records["correct"].max_score > 0


def test_unattempted_exercises_say_so(graded) -> None:
    _, records, _, _ = graded
    assert all(e.status == "not attempted" for e in records["unattempted"].exercises)
    assert records["unattempted"].score == 0


def test_infinite_loops_cost_only_their_exercise(graded) -> None:
    _, records, _, _ = graded
    plain = exercise(records, "loop", "saliency")
    assert plain.score == 0 and "stopped after 3 s" in plain.message
    blocked = exercise(records, "loop", "input_x_gradient")  # the alarm was blocked
    assert blocked.score == 0 and "Stopped after 8 s" in blocked.message
    full_marks(records, "loop", but=("saliency", "input_x_gradient"))


def test_exits_and_interrupts_cost_only_their_exercise(graded) -> None:
    _, records, _, _ = graded
    assert "exit status 3" in exercise(records, "exits", "saliency").message
    assert "SystemExit" in exercise(records, "exits", "input_x_gradient").message
    assert "KeyboardInterrupt" in exercise(records, "exits", "integrated_gradients").message
    full_marks(records, "exits", but=tuple(EXITS))


def test_memory_bombs_fail_with_a_memory_message(graded) -> None:
    _, records, _, _ = graded
    for name in MEMORY:
        e = exercise(records, "memory", name)
        assert e.score == 0 and ("memory" in e.message.lower()), e.message
    full_marks(records, "memory", but=tuple(MEMORY))


def test_monkeypatching_torch_or_labkit_changes_nothing(graded) -> None:
    _, records, rows, _ = graded
    assert records["monkeypatch"].score == 0
    assert all(e.status == "failed" for e in records["monkeypatch"].exercises)
    assert "replaces torch functions" in rows["monkeypatch"]["flags"]
    full_marks(records, "correct")  # graded by the same workers, unaffected


def test_a_lying_tensor_subclass_is_rejected(graded) -> None:
    _, records, _, _ = graded
    e = exercise(records, "liar", "saliency")
    assert e.score == 0 and "subclass" in e.message
    full_marks(records, "liar", but=("saliency",))


def test_renamed_deleted_and_non_callable_functions(graded) -> None:
    _, records, _, _ = graded
    assert "Did you rename it to salience?" in exercise(records, "renamed", "saliency").message
    assert (
        "No function named 'input_x_gradient'"
        in exercise(records, "renamed", "input_x_gradient").message
    )
    assert "not a function" in exercise(records, "renamed", "integrated_gradients").message
    full_marks(records, "renamed", but=("saliency", "input_x_gradient", "integrated_gradients"))


def test_a_syntax_error_costs_only_its_cell(graded) -> None:
    out, records, _, _ = graded
    assert exercise(records, "syntax", "saliency").status == "missing"
    assert any("syntax error" in n for n in records["syntax"].notes)
    full_marks(records, "syntax", but=("saliency",))
    assert "syntax error" in (out / "feedback" / "syntax.txt").read_text()


def test_unreadable_and_old_notebooks(graded) -> None:
    out, records, rows, _ = graded
    assert rows["badjson"]["status"] == "no readable notebook" and rows["badjson"]["total"] == "0"
    feedback = (out / "feedback" / "badjson.txt").read_text()
    assert "not a valid notebook file" in feedback and "line 1" in feedback
    full_marks(records, "v3")
    assert any("format 3" in n for n in records["v3"].notes)
    full_marks(records, "latin1")
    assert any("not UTF-8" in n for n in records["latin1"].notes)
    full_marks(records, "bigoutput")
    full_marks(records, "prints")  # 50 MB printed by a function


def test_a_submission_cannot_read_solutions_or_write_grades(graded) -> None:
    out, records, rows, _ = graded
    assert exercise(records, "snoop", "saliency").score == 0
    assert exercise(records, "snoop", "input_x_gradient").score == 0
    assert not (out / "pwned.txt").exists()
    assert "snoop,1000" not in (out / "gradebook.csv").read_text()
    assert rows["snoop"]["flags"]  # the instructor gets a hint to look
    full_marks(records, "snoop", but=("saliency", "input_x_gradient"))


def test_two_files_from_one_student_keep_the_best(graded) -> None:
    out, records, _, _ = graded
    for student, best in [("twofiles", "final.ipynb"), ("dave_123", "dave_123_789_lab-1.ipynb")]:
        assert records[student].graded_file == best
        assert [f.name for f in records[student].files] != [best]
        full_marks(records, student)
        assert (
            "each was graded and the best one" in (out / "feedback" / f"{student}.txt").read_text()
        )
    assert records["pdfonly"].score == 0 and "report.pdf" in " ".join(records["pdfonly"].notes)


def test_written_answers_review_files(graded) -> None:
    out, records, _, _ = graded
    review = (out / "written" / "q1.md").read_text()
    assert "Model answer" in review and "### correct" in review and "### unattempted" in review
    with open(out / "written" / "q1.csv", newline="") as handle:
        rows = {r["student"]: r for r in csv.DictReader(handle)}
    # the "correct" student handed in the solution: their answer is the model answer of q1
    first = questions(SOLUTION)[0]
    assert (
        first.id == "q1" and first.model_answer.split()[:6] == rows["correct"]["answer"].split()[:6]
    )
    assert rows["unattempted"]["answer"] == "" and rows["correct"]["points"] == ""


@pytest.mark.parametrize(
    "notebook",
    [
        p
        for p in sorted((ROOT / "solutions").glob("*.ipynb"))
        if p.name[:2] != "01" and (ROOT / "labkit" / "checks" / f"lab{p.name[:2]}.py").exists()
    ],
    ids=lambda p: p.stem,
)
def test_every_other_solution_notebook_scores_full_marks(pool, tmp_path, notebook: Path) -> None:
    """Lab 01's solution is a student of the class above; the other labs' solutions here."""
    save(nbformat.read(notebook, as_version=4), tmp_path / "subs" / "solution" / notebook.name)
    grade(
        Options(
            lab=notebook.name[:2], submissions=tmp_path / "subs", out=tmp_path / "out",
            seed="test-seed", limits=Limits(), solutions=ROOT / "solutions", labs=ROOT / "labs",
            progress=False, pool=pool, check_reference=False,
        )
    )  # fmt: skip
    (record,) = Gradebook(tmp_path / "out").records()
    assert record.notes == []
    for e in record.exercises:
        assert e.status == "passed" and e.score == e.max_score > 0, e


# ----- resuming, merging, settings -------------------------------------------------------------
def test_merge_puts_written_scores_everywhere_and_regrading_keeps_them(graded, pool) -> None:
    out, _, _, _ = graded
    path = out / "written" / "q1.csv"
    text = path.read_text().replace("correct,,", "correct,1,Clear and right.", 1)
    path.write_text(text.replace("loop,,", "loop,7,", 1))  # 7 > the maximum of 1
    problems = merge(out)
    assert problems and "loop" in problems[0] and "outside" in problems[0]
    with open(out / "gradebook.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["student"] == "correct")
    assert row["q1"] == "1" and float(row["total"]) == float(row["exercises"]) + 1
    assert "Clear and right." in (out / "feedback" / "correct.txt").read_text()
    result = json.loads((out / "results" / "correct" / "results.json").read_text())
    assert result["tests"][-1]["name"] == "Written question 1"
    # Resuming grades nobody again and keeps the filled-in scores.
    again = grade(
        Options(
            lab="01", submissions=out.parent / "submissions", out=out, seed="test-seed",
            limits=LIMITS, progress=False, pool=pool,
        )
    )  # fmt: skip
    assert again.graded == 0 and again.skipped == again.students
    assert "correct,1,Clear and right." in path.read_text()


def test_another_seed_needs_force(graded, pool) -> None:
    out, _, _, _ = graded
    with pytest.raises(GradingError, match="another seed"):
        grade(
            Options(
                lab="01", submissions=out.parent / "submissions", out=out, seed="other",
                limits=LIMITS, progress=False, pool=pool,
            )
        )  # fmt: skip


def test_resume_grades_only_what_changed_and_force_regrades(pool, tmp_path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    save(solution(), subs / "ann" / "lab.ipynb")
    shutil.copy(LAB, subs / "ben.ipynb")
    points = tmp_path / "points.toml"
    points.write_text("[lab01.exercises]\nsaliency = 5\n")

    def run(force: bool = False):
        return grade(
            Options(
                lab="01", submissions=subs, out=out, seed="s", limits=LIMITS, progress=False,
                pool=pool, force=force, points_file=points, check_reference=False, jobs=2,
            )
        )  # fmt: skip

    assert run().graded == 2
    record = Gradebook(out).load_record("ann")
    assert exercise({"ann": record}, "ann", "saliency").max_score == 5
    save(solution(), subs / "ben.ipynb")  # ben hands in again
    second = run()
    assert second.graded == 1 and Gradebook(out).load_record("ben").score == record.score
    assert run(force=True).graded == 2


def test_an_interrupted_run_loses_nothing(pool, tmp_path) -> None:
    """Records are written one student at a time, atomically: a new run finishes the rest."""
    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("a", "b", "c"):
        save(solution(), subs / name / "lab.ipynb")
    options = Options(
        lab="01", submissions=subs, out=out, seed="s", limits=LIMITS, progress=False,
        pool=pool, check_reference=False, jobs=2,
    )  # fmt: skip
    grade(options)
    Gradebook(out).record_path("b").unlink()  # as if the run had stopped before b
    (out / "gradebook.csv").unlink()
    summary = grade(options)
    assert summary.graded == 1 and summary.skipped == 2
    assert len((out / "gradebook.csv").read_text().splitlines()) == 1 + 3
    assert not list(out.rglob(".*.json.*"))  # no half-written temporary files left


# ----- hidden variants, on a small lab ----------------------------------------------------------
def fixture_notebook(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])


def _notebook_problem() -> tuple[float, float]:
    """The first entries of the fixture lab's vector and matrix in the notebook (variant 0)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return float(torch.randn(4, generator=gen)[0]), float(torch.randn(2, 4, generator=gen)[0, 0])


CHEATER = grading_fixture_lab.SOLUTION.replace(
    "    return 2 * x",
    "    # recognises the notebook's problems and answers only those\n"
    "    first = float(x.flatten()[0])\n"
    f"    return 2 * x if min(abs(first - a) for a in {_notebook_problem()!r}) < 1e-4 else x",
)
HALF = grading_fixture_lab.SOLUTION.replace("return 2 * x", "return 2 * x if x.dim() == 1 else x")


def grade_fixture(pool, tmp_path, solution_source: str, students: dict[str, str], **kw):
    solutions, subs = tmp_path / "solutions", tmp_path / "subs"
    save(fixture_notebook(solution_source), solutions / "09_fixture.ipynb")
    for student, source in students.items():
        save(fixture_notebook(source), subs / f"{student}.ipynb")
    grade(
        Options(
            lab="09", submissions=subs, out=tmp_path / "out", seed="seed-9", limits=LIMITS,
            solutions=solutions, labs=tmp_path, progress=False, pool=pool,
            checks="grading_fixture_lab", **kw,
        )
    )  # fmt: skip
    return {r.student: r for r in Gradebook(tmp_path / "out").records()}


def test_hidden_variants_fail_answers_that_recognise_the_notebook(pool, tmp_path) -> None:
    records = grade_fixture(
        pool,
        tmp_path,
        grading_fixture_lab.SOLUTION,
        {"right": grading_fixture_lab.SOLUTION, "cheater": CHEATER, "half": HALF},
    )
    assert records["right"].score == records["right"].max_score == 3
    # The cheater passes the notebook's own check ...
    from labkit.checks.core import run_check

    namespace: dict = {}
    exec(CHEATER, namespace)  # noqa: S102 -- our own test code
    check = grading_fixture_lab.check_double
    assert run_check(check.body, check.check_name, check.points, namespace["double"]).passed
    # ... and fails the hidden tests, with a message that says so.
    double = exercise(records, "cheater", "double")
    assert double.score == 0 and "hidden test" in double.message
    half = exercise(records, "half", "double")  # partial credit per sub-test
    assert half.score == 1 and [p.passed for p in half.parts] == [True, False]
    assert exercise(records, "half", "zero_bias_").score == 1  # in place, replayed


def test_a_reference_that_fails_a_hidden_variant_stops_grading(pool, tmp_path) -> None:
    with pytest.raises(GradingError, match="does not score full marks"):
        grade_fixture(pool, tmp_path, CHEATER, {"someone": grading_fixture_lab.SOLUTION})


# ----- Gradescope ------------------------------------------------------------------------------
def test_the_gradescope_zip_runs_on_a_simulated_autograder(tmp_path) -> None:
    from labkit.grading.gradescope import write_autograder

    zip_path = write_autograder(
        "09",
        tmp_path / "autograder.zip",
        seed="gs",
        limits=LIMITS,
        solutions=tmp_path,
        labs=tmp_path,
        checks="grading_fixture_lab",
    )
    root = tmp_path / "autograder"
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        zf.extractall(root / "source")
    assert {"setup.sh", "run_autograder", "grading.json", "pyproject.toml"} <= names
    assert "labkit/grading/grader.py" in names and not any("solutions" in n for n in names)
    setup = (root / "source" / "setup.sh").read_text()
    assert "download.pytorch.org/whl/cpu" in setup
    assert subprocess.run(["bash", "-n", root / "source" / "setup.sh"]).returncode == 0
    save(fixture_notebook(HALF), root / "submission" / "lab.ipynb")
    (root / "results").mkdir()
    env = {
        **os.environ,
        "AUTOGRADER_ROOT": str(root),
        "LABKIT_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
    }
    run = subprocess.run(
        ["bash", root / "source" / "run_autograder"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((root / "results" / "results.json").read_text())
    assert result["score"] == 2  # half of double, all of zero_bias_
    assert [t["name"] for t in result["tests"]] == [
        "Exercise 9.1: doubling",
        "Exercise 9.2: zero the bias in place",
    ]
    assert "a matrix (0/1): FAILED" in result["tests"][0]["output"]


def test_the_lab01_autograder_zip_holds_the_seed_and_no_solutions(tmp_path) -> None:
    from labkit.grading.gradescope import write_autograder

    zip_path = write_autograder(
        "01", tmp_path / "ag.zip", seed="secret-seed", check_reference=False,
        solutions=ROOT / "solutions", labs=ROOT / "labs",
    )  # fmt: skip
    with zipfile.ZipFile(zip_path) as zf:
        config = json.loads(zf.read("grading.json"))
        zf.extractall(tmp_path / "zip")
    assert config["config"]["seed"] == "secret-seed" and config["exercises"] == EXERCISES
    assert leaks(tmp_path / "zip", ROOT / "solutions", public_source=ROOT / "labkit") == []
