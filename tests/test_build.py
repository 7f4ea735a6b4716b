"""labs/ is exactly what `labkit build` writes from solutions/, and carries no solution text.

The builder fails loudly, in one line naming notebook, cell and line, on anything that looks
like a solution marker but is not exactly one: an unrecognised marker would leak the answer.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest

from labkit import cli
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
ANSWER = "secret_answer = the_hidden_formula(42)"


def test_code_region_becomes_indented_stub() -> None:
    source = (
        "def f(x):\n    '''Doc.'''\n    # BEGIN SOLUTION\n    return x * 2\n    # END SOLUTION\n"
    )
    assert strip_code_solution(source) == f"def f(x):\n    '''Doc.'''\n    {STUB_MESSAGE}"


def test_stub_lines_replace_the_default_stub() -> None:
    source = "# BEGIN SOLUTION\n# STUB: answer = None\nanswer = 42\n# END SOLUTION\nprint(answer)"
    assert strip_code_solution(source) == "answer = None\nprint(answer)"


@pytest.mark.parametrize(
    "source, line",
    [
        ("# BEGIN SOLUTION\nx = 1\n", 1),
        ("x = 1\n# END SOLUTION\n", 2),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n", 2),
        ("# STUB: x = None\n", 1),  # a stub outside a region would be kept as a comment
    ],
)
def test_malformed_markers_are_rejected(source: str, line: int) -> None:
    with pytest.raises(BuildError, match=f"^nb, line {line}: "):
        strip_code_solution(source, where="nb")


def test_markdown_answers_are_hidden() -> None:
    text = "Why?\n<!-- BEGIN SOLUTION -->\nBecause RMSNorm.\n<!-- END SOLUTION -->\nNext."
    assert strip_markdown_solution(text) == "Why?\n*Your answer here.*\nNext."
    inline = "*Your observations:* <!-- BEGIN SOLUTION -->\nLayer 5.\n<!-- END SOLUTION -->"
    assert strip_markdown_solution(inline) == "*Your observations:* *Your answer here.*"
    two = "<!-- BEGIN SOLUTION -->a<!-- END SOLUTION --> and <!-- BEGIN SOLUTION -->b\n"
    assert strip_markdown_solution(two + "<!-- END SOLUTION -->") == (
        "*Your answer here.* and *Your answer here.*"
    )


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


# ----- whole builds in a temporary folder --------------------------------------------------------
def write_solution(folder: Path, cells: list, name: str = "01_x.ipynb", minor: int = 5) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if minor < 5:  # an old notebook without cell ids
        nb.nbformat_minor = minor
        for cell in nb.cells:
            cell.pop("id", None)
    path.write_text(nbformat.writes(nb, version=4), encoding="utf-8")
    return path


def run_build(tmp_path: Path, *extra: str, labs: str = "labs") -> int:
    solutions = tmp_path / "solutions"
    return cli.main(
        ["build", "--solutions", str(solutions), "--labs", str(tmp_path / labs), *extra]
    )


def code(source: str, **metadata) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source, metadata=metadata)


def markdown(source: str, **metadata) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(source, metadata=metadata)


BAD_MARKERS = {
    "markdown unclosed": markdown(f"Q?\n<!-- BEGIN SOLUTION -->\n{ANSWER}\n"),
    "markdown nested": markdown(
        f"<!-- BEGIN SOLUTION -->\n<!-- BEGIN SOLUTION -->\n{ANSWER}\n<!-- END SOLUTION -->\n"
    ),
    "markdown without spaces": markdown(
        f"Q?\n<!--BEGIN SOLUTION-->\n{ANSWER}\n<!--END SOLUTION-->"
    ),
    "markdown lowercase": markdown(f"Q?\n<!-- begin solution -->\n{ANSWER}\n<!-- end solution -->"),
    "markdown with a code marker": markdown(f"Q?\n# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION"),
    "markdown fenced block": markdown(
        f"Q?\n```python\n# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION\n```"
    ),
    "markdown markers in a fence": markdown(
        f"Q?\n~~~\n<!-- BEGIN SOLUTION -->\n{ANSWER}\n<!-- END SOLUTION -->\n~~~"
    ),
    "nbgrader": code(f"def f():\n    ### BEGIN SOLUTION\n    {ANSWER}\n    ### END SOLUTION"),
    "trailing words": code(
        f"def f():\n    # BEGIN SOLUTION (ex 1)\n    {ANSWER}\n    # END SOLUTION"
    ),
    "no space": code(f"def f():\n    #BEGIN SOLUTION\n    {ANSWER}\n    #END SOLUTION"),
    "lowercase": code(f"def f():\n    # begin solution\n    {ANSWER}\n    # end solution"),
    "title case end": code(f"def f():\n    # BEGIN SOLUTION\n    {ANSWER}\n    # End Solution"),
    "underscore": code(f"def f():\n    # BEGIN_SOLUTION\n    {ANSWER}\n    # END_SOLUTION"),
    "html marker in code": code(f"<!-- BEGIN SOLUTION -->\n{ANSWER}\n<!-- END SOLUTION -->"),
    "bad stub": code(f"# BEGIN SOLUTION\n#STUB: x = None\n{ANSWER}\n# END SOLUTION"),
    "raw cell": nbformat.v4.new_raw_cell(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION"),
}


@pytest.mark.parametrize("cell", BAD_MARKERS.values(), ids=BAD_MARKERS.keys())
def test_anything_like_a_marker_is_a_one_line_error(tmp_path: Path, cell, capsys) -> None:
    write_solution(tmp_path / "solutions", [markdown("# Lab"), code("x = 1"), cell])
    assert run_build(tmp_path) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err
    assert re.search(r"01_x\.ipynb, cell 3 \((code|markdown|raw)\), line \d+: ", err), err
    assert not (tmp_path / "labs").exists(), "a broken solution must write nothing"


def test_the_error_names_the_offending_line(tmp_path: Path, capsys) -> None:
    write_solution(tmp_path / "solutions", [code(BAD_MARKERS["no space"].source)])
    run_build(tmp_path)
    assert "cell 1 (code), line 2: '#BEGIN SOLUTION' looks like a solution marker" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("tag", ["instructor", "Instructor", "INSTRUCTOR", " instructor "])
def test_instructor_tags_match_in_any_case(tmp_path: Path, tag: str) -> None:
    write_solution(tmp_path / "solutions", [code(ANSWER, tags=[tag]), code("x = 1")])
    assert run_build(tmp_path) == 0
    assert "secret_answer" not in (tmp_path / "labs" / "01_x.ipynb").read_text()


@pytest.mark.parametrize("labs", ["solutions", "solutions/labs", "solutions/../solutions"])
def test_the_output_folder_cannot_be_the_solutions_folder(tmp_path, labs, capsys) -> None:
    src = write_solution(
        tmp_path / "solutions", [code(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION")]
    )
    before = src.read_text()
    assert run_build(tmp_path, labs=labs) == 1
    assert "overwrite the solutions" in capsys.readouterr().err
    assert src.read_text() == before
    assert sorted(p.name for p in (tmp_path / "solutions").rglob("*")) == ["01_x.ipynb"]


def test_stale_labs_are_reported_and_removed(tmp_path: Path, capsys) -> None:
    write_solution(tmp_path / "solutions", [code("x = 1")], name="01_old.ipynb")
    assert run_build(tmp_path) == 0
    (tmp_path / "solutions" / "01_old.ipynb").rename(tmp_path / "solutions" / "01_new.ipynb")
    handmade = tmp_path / "labs" / "notes.ipynb"  # not generated: never touched
    write_solution(tmp_path / "labs", [code("mine = 1")], name="notes.ipynb")
    capsys.readouterr()
    assert run_build(tmp_path, "--check") == 1
    err = capsys.readouterr().err
    assert "01_old.ipynb (its solution no longer exists)" in err and "01_new.ipynb" in err
    assert run_build(tmp_path) == 0
    assert "Removed" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "labs").iterdir()) == ["01_new.ipynb", "notes.ipynb"]
    assert handmade.exists()
    assert run_build(tmp_path, "--check") == 0


def test_invalid_json_names_the_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "03_broken.ipynb").write_text('{"cells": [', encoding="utf-8")
    assert run_build(tmp_path) == 1
    err = capsys.readouterr().err
    assert "03_broken.ipynb: not a readable notebook" in err and len(err.strip().splitlines()) == 1


def test_labs_have_stable_cell_ids(tmp_path: Path) -> None:
    """nbformat 4.5 with ids (JupyterLab does not mark the lab modified on open): copied from
    the solution, or derived from position and source when the solution has none."""
    cells = [markdown("# Lab"), code("x = 1"), code(ANSWER, tags=["instructor"]), code("y = 2")]
    src = write_solution(tmp_path / "solutions", cells)
    run_build(tmp_path)
    lab = nbformat.read(tmp_path / "labs" / "01_x.ipynb", as_version=4)
    nbformat.validate(lab)
    assert (lab.nbformat, lab.nbformat_minor) == (4, 5)
    solution_ids = [c.id for c in nbformat.read(src, as_version=4).cells]
    assert [c.id for c in lab.cells] == ["generated-banner", *solution_ids[:2], solution_ids[3]]
    # Without ids in the solution: derived ones, the same at every build.
    write_solution(tmp_path / "solutions", cells, minor=4)
    run_build(tmp_path)
    first = (tmp_path / "labs" / "01_x.ipynb").read_text()
    (tmp_path / "labs" / "01_x.ipynb").unlink()
    run_build(tmp_path)
    assert (tmp_path / "labs" / "01_x.ipynb").read_text() == first
    ids = [c["id"] for c in json.loads(first)["cells"]]
    assert len(set(ids)) == len(ids) == 4


def test_repeated_solution_ids_become_unique(tmp_path: Path) -> None:
    cells = [code("x = 1"), code("y = 2")]
    cells[1].id = cells[0].id
    nb = nbformat.v4.new_notebook(cells=cells)
    ids = [c.id for c in student_notebook(nb, "x.ipynb").cells]
    assert len(set(ids)) == 3


# ----- the real labs -----------------------------------------------------------------------------
def test_labs_are_in_sync_with_solutions() -> None:
    assert build(ROOT / "solutions", ROOT / "labs", check_only=True) == [], (
        "labs/ is out of date: run `labkit build` and commit labs/."
    )


REGION = re.compile(r"begin[\s_-]*solution.*?\n(.*?)(?:end[\s_-]*solution|\Z)", re.I | re.S)


def solution_texts(solution: nbformat.NotebookNode) -> list[str]:
    """The lines of every solution region (code and markdown, found with a loose, case-blind
    pattern, independently of the builder) and of every instructor cell, except lines that the
    solution also shows outside them (such as ``with torch.no_grad():``)."""
    hidden, shown = [], ""
    for cell in solution.cells:
        tags = [t.strip().lower() for t in cell.get("metadata", {}).get("tags", [])]
        if "instructor" in tags:
            hidden.append(cell.source)
        else:
            hidden += REGION.findall(cell.source + "\n")
            shown += REGION.sub("", cell.source + "\n").lower()
    texts = []
    for chunk in hidden:
        for line in chunk.splitlines():
            line = re.sub(r"^#\s*STUB:.*$", "", line.strip()).strip("#-> ").strip()
            if len(line) >= 12 and line.lower() not in shown:
                texts.append(line)
    return texts


@pytest.mark.parametrize("path", sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.stem)
def test_labs_carry_no_solution_text(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    solution = nbformat.read(ROOT / "solutions" / path.name, as_version=4)
    student_text = ""
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        assert not any(marker.lower() in source.lower() for marker in MARKERS)
        assert not cell.get("outputs")
        student_text += source.lower() + "\n"
    texts = solution_texts(solution)
    assert texts, "found no solution regions: is the leak test still looking at the right thing?"
    for line in texts:
        assert line.lower() not in student_text, f"solution text leaked into {path.name}: {line}"


def test_the_leak_test_finds_lowercase_regions_and_markdown() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        code(f"# begin solution\n{ANSWER}\n# end solution"),
        markdown("<!-- BEGIN SOLUTION -->\nThe attention sink carries the answer.\n"),
        code("print('only the instructor sees this line')", tags=["Instructor"]),
    ]
    assert solution_texts(nb) == [
        ANSWER,
        "The attention sink carries the answer.",
        "print('only the instructor sees this line')",
    ]
