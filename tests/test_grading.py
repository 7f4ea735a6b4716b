"""labkit grade: hidden tests, contained workers, and a gradebook that survives anything a student
hands in.

Most tests grade the two-exercise fixture lab (tests/grading_fixture_lab.py): fast, and enough to
show every path of the grader. Each real lab's solution then goes through the very same path
and must score full marks. The hostile class is in test_grading_hostile.py; the workers'
containment in test_grading_sandbox.py.
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

import nbformat
import pytest
from support import grading_fixture_lab

from labkit.grading.config import GradingError, Limits
from labkit.grading.gradebook import Gradebook, merge
from labkit.grading.grader import Options, grade, preload_modules, start_all
from labkit.grading.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(
    memory_mb=4096, seconds_per_call=3.0, seconds_per_exercise=20.0, seconds_per_submission=300.0
)
pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")]
QUESTION = "**Question 9.1.** Why double?"
MODEL_ANSWER = "Because twice is the definition."


def fixture_notebook(source: str, answer: str | None = None) -> nbformat.NotebookNode:
    """The fixture lab: its code, and one written question (answered with ``answer``)."""
    cells = [nbformat.v4.new_code_cell(source), nbformat.v4.new_markdown_cell(QUESTION)]
    if answer is not None:
        cells.append(nbformat.v4.new_markdown_cell(answer))
    return nbformat.v4.new_notebook(cells=cells)


def save(nb: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def write_solution(folder: Path) -> Path:
    nb = fixture_notebook(grading_fixture_lab.SOLUTION)
    nb.cells.append(
        nbformat.v4.new_markdown_cell(f"<!-- BEGIN SOLUTION -->{MODEL_ANSWER}<!-- END SOLUTION -->")
    )
    return save(nb, folder / "09_fixture.ipynb")


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
STUB = grading_fixture_lab.SOLUTION.replace(
    "    return 2 * x", "    raise NotImplementedError('Exercise')"
).replace("    with torch.no_grad():\n        net.bias.zero_()", "    raise NotImplementedError")


def make_class(folder: Path) -> None:
    """Every awkward, honest kind of hand-in, one student each."""
    save(fixture_notebook(grading_fixture_lab.SOLUTION, "Twice is the definition."),
         folder / "correct" / "lab.ipynb")  # fmt: skip
    save(fixture_notebook(STUB), folder / "unattempted.ipynb")
    save(fixture_notebook(HALF), folder / "half" / "lab.ipynb")
    renamed = grading_fixture_lab.SOLUTION.replace("def double(", "def doubled(")
    save(fixture_notebook(renamed + "\nzero_bias_ = 42\n"), folder / "renamed" / "lab.ipynb")
    save(fixture_notebook(grading_fixture_lab.SOLUTION + "\nx = (  # never closed\n"),
         folder / "syntax" / "lab.ipynb")  # fmt: skip
    (folder / "badjson").mkdir()
    (folder / "badjson" / "lab.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')
    (folder / "v3").mkdir()
    v3 = nbformat.convert(fixture_notebook(grading_fixture_lab.SOLUTION), 3)
    (folder / "v3" / "lab.ipynb").write_text(nbformat.writes(v3))
    latin = fixture_notebook(grading_fixture_lab.SOLUTION + "\n# café, naïve\n")
    (folder / "latin1").mkdir()
    (folder / "latin1" / "lab.ipynb").write_bytes(nbformat.writes(latin).encode("cp1252"))
    big = fixture_notebook(grading_fixture_lab.SOLUTION)
    big.cells[0].outputs = [nbformat.v4.new_output("stream", text="y" * (50 * 2**20))]
    save(big, folder / "bigoutput" / "lab.ipynb")
    save(fixture_notebook(grading_fixture_lab.SOLUTION), folder / "twofiles" / "final.ipynb")
    save(fixture_notebook(STUB), folder / "twofiles" / "draft.ipynb")
    save(fixture_notebook(STUB), folder / "dave_123_456_lab.ipynb")  # Canvas: one student
    save(fixture_notebook(grading_fixture_lab.SOLUTION), folder / "dave_123_789_lab-1.ipynb")
    (folder / "pdfonly").mkdir()
    (folder / "pdfonly" / "report.pdf").write_bytes(b"%PDF-1.4 not a notebook")
    save(fixture_notebook(CHEATER), folder / "cheater" / "lab.ipynb")


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    """Two started workers, shared by every test here."""
    preload = []
    for notebook in sorted((ROOT / "labs").glob("*.ipynb")):
        preload += preload_modules(notebook)
    sandboxes = [Sandbox(LIMITS, slot=k, preload=list(dict.fromkeys(preload))) for k in range(2)]
    start_all(sandboxes)
    yield sandboxes
    for sandbox in sandboxes:
        sandbox.close()


def options(base: Path, **kw) -> Options:
    settings = dict(
        lab="09", submissions=base / "subs", out=base / "out", jobs=2, seed="seed-9",
        limits=LIMITS, solutions=base / "solutions", labs=base / "solutions", progress=False,
        checks="support.grading_fixture_lab",
    )  # fmt: skip
    return Options(**{**settings, **kw})


@pytest.fixture(scope="module")
def graded(pool, tmp_path_factory):
    """The class graded once: (output folder, records by student, gradebook rows, summary)."""
    base = tmp_path_factory.mktemp("class")
    write_solution(base / "solutions")
    make_class(base / "subs")
    summary = grade(options(base, pool=pool))
    records = {r.student: r for r in Gradebook(base / "out").records()}
    with open(base / "out" / "gradebook.csv", newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    return base, records, rows, summary


def exercise(records, student: str, name: str):
    return next(e for e in records[student].exercises if e.function == name)


def full_marks(records, student: str, but: tuple[str, ...] = ()) -> None:
    for e in records[student].exercises:
        if e.function not in but:
            assert e.status == "passed" and e.score == e.max_score, (student, e)


# ----- the class -------------------------------------------------------------------------------
def test_every_student_has_a_row_feedback_and_results(graded) -> None:
    base, records, rows, summary = graded
    students = {
        "correct", "unattempted", "half", "renamed", "syntax", "badjson", "v3", "latin1",
        "bigoutput", "twofiles", "dave_123", "pdfonly", "cheater",
    }  # fmt: skip
    assert set(rows) == students and set(records) == students
    assert summary.graded == len(students)
    for student in students:
        feedback = (base / "out" / "feedback" / f"{student}.txt").read_text()
        assert feedback.startswith("Lab 09: feedback")
        result = json.loads((base / "out" / "results" / student / "results.json").read_text())
        assert {"score", "execution_time", "tests"} <= set(result)
        for test in result["tests"]:
            assert {"name", "number", "max_score", "output", "visibility"} <= set(test)
    assert list(rows["correct"])[:4] == ["student", "source", "files", "graded_file"]
    assert rows["dave_123"]["files"] == "dave_123_456_lab.ipynb; dave_123_789_lab-1.ipynb"


def test_the_solution_scores_full_marks_and_stubs_say_not_attempted(graded) -> None:
    _, records, rows, _ = graded
    full_marks(records, "correct")
    assert float(rows["correct"]["exercises"]) == records["correct"].max_score == 3
    assert all(e.status == "not attempted" for e in records["unattempted"].exercises)
    assert records["unattempted"].score == 0


def test_hidden_variants_fail_answers_that_recognise_the_notebook(graded) -> None:
    _, records, _, _ = graded
    from labkit.checks.core import run_check
    from labkit.grading.answers import AnswerKey, ComputedAnswers

    namespace: dict = {}
    exec(CHEATER, namespace)  # noqa: S102 -- our own test code
    solution: dict = {}
    exec(grading_fixture_lab.SOLUTION, solution)  # noqa: S102
    answers = ComputedAnswers(AnswerKey("09"), solution)
    check = grading_fixture_lab.check_double
    assert run_check(check, namespace["double"], answers=answers).passed  # the notebook's problem
    double = exercise(records, "cheater", "double")
    assert double.score == 0 and "hidden test" in double.message
    half = exercise(records, "half", "double")  # partial credit per sub-test
    assert half.score == 1 and [p.passed for p in half.parts] == [True, False]
    assert exercise(records, "half", "zero_bias_").score == 1  # a module changed in place


def test_renamed_non_callable_and_syntax_errors(graded) -> None:
    base, records, _, _ = graded
    assert "Did you rename it to doubled?" in exercise(records, "renamed", "double").message
    assert exercise(records, "renamed", "zero_bias_").status == "missing"
    assert all(e.status == "missing" for e in records["syntax"].exercises)  # Run All stops there
    assert any("syntax error" in n for n in records["syntax"].notes)
    assert "syntax error" in (base / "out" / "feedback" / "syntax.txt").read_text()


def test_unreadable_old_and_oddly_encoded_notebooks(graded) -> None:
    base, records, rows, _ = graded
    assert rows["badjson"]["status"] == "no readable notebook" and rows["badjson"]["total"] == "0"
    feedback = (base / "out" / "feedback" / "badjson.txt").read_text()
    assert "not a valid notebook file" in feedback and "line 1" in feedback
    full_marks(records, "v3")
    assert any("format 3" in n for n in records["v3"].notes)
    full_marks(records, "latin1")
    assert any("not UTF-8" in n for n in records["latin1"].notes)
    full_marks(records, "bigoutput")


def test_two_files_from_one_student_keep_the_best(graded) -> None:
    base, records, _, _ = graded
    for student, best in [("twofiles", "final.ipynb"), ("dave_123", "dave_123_789_lab-1.ipynb")]:
        assert records[student].graded_file == best
        full_marks(records, student)
        feedback = (base / "out" / "feedback" / f"{student}.txt").read_text()
        assert "each was graded and the best one" in feedback
    assert records["pdfonly"].score == 0 and "report.pdf" in " ".join(records["pdfonly"].notes)


def test_written_answers_review_files(graded) -> None:
    base, _, _, _ = graded
    review = (base / "out" / "written" / "q1.md").read_text()
    assert "Model answer" in review and MODEL_ANSWER in review and "### correct" in review
    with open(base / "out" / "written" / "q1.csv", newline="") as handle:
        rows = {r["student"]: r for r in csv.DictReader(handle)}
    assert rows["correct"]["answer"] == "Twice is the definition."
    assert rows["unattempted"]["answer"] == "" and rows["correct"]["points"] == ""


# ----- resuming, merging, settings -------------------------------------------------------------
def test_merge_puts_written_scores_everywhere_and_regrading_keeps_them(graded, pool) -> None:
    base, _, _, _ = graded
    out = base / "out"
    path = out / "written" / "q1.csv"
    text = path.read_text().replace("correct,,", "correct,1,Clear and right.", 1)
    path.write_text(text.replace("half,,", "half,7,", 1))  # 7 > the maximum of 1
    problems = merge(out)
    assert problems and "half" in problems[0] and "outside" in problems[0]
    with open(out / "gradebook.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["student"] == "correct")
    assert row["q1"] == "1" and float(row["total"]) == float(row["exercises"]) + 1
    assert "Clear and right." in (out / "feedback" / "correct.txt").read_text()
    result = json.loads((out / "results" / "correct" / "results.json").read_text())
    assert result["tests"][-1]["name"] == "Written question 1"
    again = grade(options(base, pool=pool))  # resuming grades nobody again
    assert again.graded == 0 and again.skipped == again.students
    assert "correct,1,Clear and right." in path.read_text()


def test_another_seed_needs_force(graded, pool) -> None:
    base, _, _, _ = graded
    with pytest.raises(GradingError, match="another seed"):
        grade(options(base, pool=pool, seed="other"))


def test_resume_grades_only_what_changed_and_force_regrades(pool, tmp_path) -> None:
    write_solution(tmp_path / "solutions")
    save(fixture_notebook(grading_fixture_lab.SOLUTION), tmp_path / "subs" / "ann" / "lab.ipynb")
    save(fixture_notebook(STUB), tmp_path / "subs" / "ben.ipynb")
    points = tmp_path / "points.toml"
    points.write_text("[lab09.exercises]\ndouble = 5\n")

    def run(force: bool = False):
        return grade(options(tmp_path, pool=pool, force=force, points_file=points))

    assert run().graded == 2
    record = Gradebook(tmp_path / "out").load_record("ann")
    assert exercise({"ann": record}, "ann", "double").max_score == 5
    save(fixture_notebook(grading_fixture_lab.SOLUTION), tmp_path / "subs" / "ben.ipynb")
    second = run()
    assert second.graded == 1
    assert Gradebook(tmp_path / "out").load_record("ben").score == record.score
    assert run(force=True).graded == 2


def test_an_interrupted_run_loses_nothing(pool, tmp_path) -> None:
    """Records are written one student at a time, atomically: a new run finishes the rest."""
    write_solution(tmp_path / "solutions")
    for name in ("a", "b", "c"):
        save(fixture_notebook(grading_fixture_lab.SOLUTION), tmp_path / "subs" / name / "l.ipynb")
    grade(options(tmp_path, pool=pool))
    Gradebook(tmp_path / "out").record_path("b").unlink()  # as if the run had stopped before b
    (tmp_path / "out" / "gradebook.csv").unlink()
    summary = grade(options(tmp_path, pool=pool))
    assert summary.graded == 1 and summary.skipped == 2
    assert len((tmp_path / "out" / "gradebook.csv").read_text().splitlines()) == 1 + 3
    assert not list((tmp_path / "out").rglob(".*.json.*"))  # no half-written temporary files


def _notebook_weight() -> float:
    import torch

    torch.manual_seed(1)  # what check_zero_bias_ builds in the notebook (t.seed(1) is 1 there)
    return float(torch.nn.Linear(3, 2).weight[0, 0])


# A reference that works on the notebook's problem only: its own check's invariant fails it on
# a hidden variant, so grading must stop before any student is graded.
BAD_REFERENCE = grading_fixture_lab.SOLUTION.replace(
    "    with torch.no_grad():\n        net.bias.zero_()",
    f"    if abs(float(net.weight[0, 0]) - {_notebook_weight()!r}) < 1e-6:\n"
    "        with torch.no_grad():\n            net.bias.zero_()",
)


def test_a_reference_that_fails_a_hidden_variant_stops_grading(pool, tmp_path) -> None:
    save(fixture_notebook(BAD_REFERENCE), tmp_path / "solutions" / "09_fixture.ipynb")
    save(fixture_notebook(grading_fixture_lab.SOLUTION), tmp_path / "subs" / "someone.ipynb")
    with pytest.raises(GradingError, match="does not score full marks"):
        grade(options(tmp_path, pool=pool))


def test_model_answers_reach_students_only_where_the_instructor_allows(pool, tmp_path) -> None:
    write_solution(tmp_path / "solutions")
    save(
        fixture_notebook(grading_fixture_lab.SOLUTION, "Mine."), tmp_path / "subs" / "a" / "l.ipynb"
    )
    grade(options(tmp_path, pool=pool))
    assert MODEL_ANSWER not in (tmp_path / "out" / "feedback" / "a.txt").read_text()
    grade(options(tmp_path, pool=pool, force=True, share_model_answers=True))
    assert MODEL_ANSWER in (tmp_path / "out" / "feedback" / "a.txt").read_text()
    results = json.loads((tmp_path / "out" / "results" / "a" / "results.json").read_text())
    assert any(MODEL_ANSWER in t["output"] for t in results["tests"])


# ----- every real lab ----------------------------------------------------------------------------
@pytest.mark.parametrize("lab", ["01", "02", "03"])
def test_each_labs_solution_scores_full_marks_through_the_grader(pool, tmp_path, lab) -> None:
    """The solution notebook as a student's: every check runs here, every call in a worker,
    on the notebook's problems and the hidden variants."""
    notebook = next((ROOT / "solutions").glob(f"{lab}_*.ipynb"))
    save(nbformat.read(notebook, as_version=4), tmp_path / "subs" / "solution" / notebook.name)
    summary = grade(
        Options(
            lab=lab, submissions=tmp_path / "subs", out=tmp_path / "out", seed="test-seed",
            limits=Limits(), solutions=ROOT / "solutions", labs=ROOT / "labs", progress=False,
            pool=pool, check_reference=False,
        )
    )  # fmt: skip
    (record,) = Gradebook(tmp_path / "out").records()
    assert summary.graded == 1 and record.notes == []
    for e in record.exercises:
        assert e.status == "passed" and e.score == e.max_score > 0, e


# ----- Gradescope ------------------------------------------------------------------------------
def _autograder(tmp_path: Path, submission: str) -> tuple[dict, subprocess.CompletedProcess]:
    from labkit.grading.gradescope import write_autograder

    write_solution(tmp_path / "solutions")
    zip_path = write_autograder(
        "09", tmp_path / "autograder.zip", seed="gs", limits=LIMITS,
        solutions=tmp_path / "solutions", labs=tmp_path, checks="support.grading_fixture_lab",
    )  # fmt: skip
    root = tmp_path / "autograder"
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        zf.extractall(root / "source")
    assert {"setup.sh", "run_autograder", "grading.json", "pyproject.toml"} <= names
    assert "labkit/grading/grader.py" in names and "solutions/09_fixture.ipynb" in names
    setup = (root / "source" / "setup.sh").read_text()
    assert "download.pytorch.org/whl/cpu" in setup and "chmod -R go-rwx" in setup
    assert subprocess.run(["bash", "-n", root / "source" / "setup.sh"]).returncode == 0
    save(fixture_notebook(submission), root / "submission" / "lab.ipynb")
    (root / "results").mkdir()
    private = tmp_path / "private-labkit"  # the installed labkit, private as setup.sh leaves it
    shutil.copytree(ROOT / "labkit", private / "labkit",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    os.chmod(private, 0o700)
    env = {
        **os.environ,
        "AUTOGRADER_ROOT": str(root),
        "LABKIT_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(private), str(Path(__file__).parent)]),
        "LABKIT_SANDBOX": "container",  # Gradescope's Docker: no namespaces, no cgroups
    }
    run = subprocess.run(
        ["bash", root / "source" / "run_autograder"], env=env, capture_output=True, text=True
    )
    result = json.loads((root / "results" / "results.json").read_text())
    return result, run


@pytest.mark.skipif(os.geteuid() != 0, reason="Gradescope runs the autograder as root")
def test_the_gradescope_zip_runs_as_in_gradescopes_container(tmp_path) -> None:
    result, run = _autograder(tmp_path, HALF)
    assert run.returncode == 0, run.stderr[-3000:]
    assert result["score"] == 2, result  # half of double, all of zero_bias_
    assert [t["name"] for t in result["tests"]] == [
        "Exercise 9.1: doubling",
        "Exercise 9.2: zero the bias in place",
    ]
    assert "a matrix (0/1): FAILED" in result["tests"][0]["output"]
    assert "gs" not in json.dumps(result).replace('"gs"', "")  # the seed is nowhere


def test_the_lab01_autograder_zip_holds_its_seed_and_its_solution_only(tmp_path) -> None:
    from labkit.grading.gradescope import write_autograder

    zip_path = write_autograder(
        "01", tmp_path / "ag.zip", seed="secret-seed", check_reference=False,
        solutions=ROOT / "solutions", labs=ROOT / "labs",
    )  # fmt: skip
    with zipfile.ZipFile(zip_path) as zf:
        config = json.loads(zf.read("grading.json"))
        names = zf.namelist()
        zf.extractall(tmp_path / "zip")
    assert config["config"]["seed"] == "secret-seed"
    assert [n for n in names if n.startswith("solutions/")] == ["solutions/01_attribution.ipynb"]
