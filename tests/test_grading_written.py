"""labkit.grading.written: written answers found in a student's notebook, wherever they are."""

from __future__ import annotations

from pathlib import Path

from labkit.grading.submissions import read_notebook
from labkit.grading.written import answers, questions, review_csv

ROOT = Path(__file__).resolve().parents[1]


def test_questions_come_from_the_solution_notebooks() -> None:
    found = questions(ROOT / "solutions" / "02_causal_tracing.ipynb")
    assert [q.id for q in found] == [f"q{i}" for i in range(1, 10)]  # Q2.1-Q2.7, A and B
    assert all(q.model_answer and "BEGIN SOLUTION" not in q.model_answer for q in found)
    assert all("*Your answer here.*" in q.stub for q in found)


def test_answers_are_found_even_after_cells_were_added(tmp_path: Path) -> None:
    found = questions(ROOT / "solutions" / "02_causal_tracing.ipynb")
    lab = read_notebook(ROOT / "labs" / "02_causal_tracing.ipynb")
    assert answers(lab.cells, found) == {q.id: None for q in found}  # untouched stubs
    for cell in lab.cells:
        if cell.kind == "markdown" and "*Your answer here.*" in cell.source:
            cell.source = cell.source.replace("*Your answer here.*", f"My answer {cell.index}.")
    lab.cells.insert(3, lab.cells[0].__class__("code", "x = 1", 99))  # an extra cell
    got = answers(lab.cells, found)
    assert got["q1"].startswith("My answer") and got["q2"].startswith("My answer")
    assert got["q1"] != got["q2"] and "Your answer" not in got["q1"]
    assert all(got[q.id].startswith("My answer") for q in found)


def test_the_review_csv_keeps_what_was_filled_in() -> None:
    kept = {"ann": {"points": "1", "comment": "good"}}
    text = review_csv([("ann", "line one\nline two"), ("bob", None)], kept)
    assert text.splitlines()[1] == "ann,1,good,line one / line two"
    assert text.splitlines()[2] == "bob,,,"
