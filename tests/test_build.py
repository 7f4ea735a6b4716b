"""labs/ is exactly what `labkit build` writes from solutions/, and carries no solution text."""

import json
from pathlib import Path

import nbformat
import pytest

from labkit.build import (
    MARKERS,
    STUB_MESSAGE,
    BuildError,
    build,
    strip_code_solution,
    strip_markdown_solution,
    student_notebook,
)

ROOT = Path(__file__).resolve().parents[1]


def test_code_region_becomes_indented_stub() -> None:
    source = (
        "def f(x):\n    '''Doc.'''\n    # BEGIN SOLUTION\n    return x * 2\n    # END SOLUTION\n"
    )
    assert strip_code_solution(source) == f"def f(x):\n    '''Doc.'''\n    {STUB_MESSAGE}"


def test_stub_lines_replace_the_default_stub() -> None:
    source = "# BEGIN SOLUTION\n# STUB: answer = None\nanswer = 42\n# END SOLUTION\nprint(answer)"
    assert strip_code_solution(source) == "answer = None\nprint(answer)"


@pytest.mark.parametrize(
    "source",
    [
        "# BEGIN SOLUTION\nx = 1\n",
        "x = 1\n# END SOLUTION\n",
        "# BEGIN SOLUTION\n# BEGIN SOLUTION\n",
    ],
)
def test_malformed_markers_are_rejected(source: str) -> None:
    with pytest.raises(BuildError):
        strip_code_solution(source)


def test_markdown_answers_are_hidden() -> None:
    text = "Why?\n<!-- BEGIN SOLUTION -->\nBecause RMSNorm.\n<!-- END SOLUTION -->\nNext."
    assert strip_markdown_solution(text) == "Why?\n*Your answer here.*\nNext."


def test_instructor_cells_and_outputs_are_dropped() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("secret = 1", metadata={"tags": ["instructor"]}),
        nbformat.v4.new_code_cell("print(2)", execution_count=3),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="2\n")]
    student = student_notebook(nb, "x.ipynb")
    code = [c for c in student.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["print(2)"]
    assert code[0].outputs == [] and code[0].execution_count is None


def test_labs_are_in_sync_with_solutions(tmp_path: Path) -> None:
    assert build(ROOT / "solutions", ROOT / "labs", check_only=True) == [], (
        "labs/ is out of date: run `labkit build` and commit labs/."
    )


@pytest.mark.parametrize("path", sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.stem)
def test_labs_carry_no_solution_text(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    solution = nbformat.read(ROOT / "solutions" / path.name, as_version=4)
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        assert not any(marker in source for marker in MARKERS)
        assert not cell.get("outputs")
    # Every solution region's code is gone from the student notebook.
    student_text = path.read_text(encoding="utf-8")
    for cell in solution.cells:
        if cell.cell_type != "code" or "# BEGIN SOLUTION" not in cell.source:
            continue
        inside = cell.source.split("# BEGIN SOLUTION")[1].split("# END SOLUTION")[0]
        for line in inside.splitlines():
            line = line.strip()
            if len(line) > 25 and not line.startswith("#"):
                assert json.dumps(line)[1:-1] not in student_text, f"solution line leaked: {line}"
