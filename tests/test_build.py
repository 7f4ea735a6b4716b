"""labs/ is exactly what `labkit build` writes from solutions/, and carries no solution text.

The builder fails loudly, in one line naming notebook, cell and line, on anything that looks
like a solution marker but is not exactly one: an unrecognised marker would leak the answer.
"""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit import cli
from labkit.build import (
    MARKERS,
    STUB_MESSAGE,
    BuildError,
    Change,
    _student_metadata,
    build,
    is_generated_lab,
    is_instructor_cell,
    read_nbformat,
    render,
    strip_code_solution,
    strip_markdown_solution,
    student_cell,
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


# ----- exact messages and edge cases (mutation survivors) ----------------------------------------
CODE_RULES = (
    "In code cells the markers are exactly '# BEGIN SOLUTION', '# END SOLUTION' and "
    "'# STUB: <code>', each on a line of its own."
)
MARKDOWN_RULES = (
    "In markdown cells the markers are exactly '<!-- BEGIN SOLUTION -->' and "
    "'<!-- END SOLUTION -->', outside code blocks."
)
RAW_RULES = "Raw cells cannot hold solution markers: use a code or a markdown cell."


def build_error(fn, *args) -> str:
    from labkit.notebooks import NotebookError

    with pytest.raises(NotebookError) as info:
        fn(*args)
    return str(info.value)


def test_marker_errors_word_for_word() -> None:
    """Each error names the cell ("a cell" by default) and line, and states the rules of its
    cell type."""
    assert build_error(strip_code_solution, "x = 1\n#BEGIN SOLUTION") == (
        f"a cell, line 2: '#BEGIN SOLUTION' looks like a solution marker but is not one. "
        f"{CODE_RULES}"
    )
    assert build_error(strip_code_solution, "# STUB: x = 1") == (
        "a cell, line 1: '# STUB:' outside a solution region; put it between "
        "'# BEGIN SOLUTION' and '# END SOLUTION'."
    )
    assert build_error(strip_markdown_solution, "Q\n\n<!--BEGIN SOLUTION-->") == (
        "a cell, line 3: '<!--BEGIN SOLUTION-->' looks like a solution marker but is not one. "
        f"{MARKDOWN_RULES}"
    )
    assert build_error(strip_markdown_solution, "Q\n<!-- END SOLUTION -->") == (
        "a cell, line 2: '<!-- END SOLUTION -->' without a BEGIN."
    )


def test_raw_cell_errors_name_the_line_and_the_raw_rules(tmp_path: Path) -> None:
    """A marker in a raw cell: the line number counts from 1 and the message says to use a
    code or markdown cell; a raw cell without markers is copied as it is, tags kept."""
    raw = nbformat.v4.new_raw_cell("text\n# END SOLUTION", metadata={"tags": ["t"]})
    write_solution(tmp_path / "solutions", [raw])
    assert build_error(build, tmp_path / "solutions", tmp_path / "labs") == (
        "solutions/01_x.ipynb, cell 1 (raw), line 2: '# END SOLUTION' looks like a solution "
        f"marker but is not one. {RAW_RULES}"
    )
    raw.source = "plain raw text"
    write_solution(tmp_path / "solutions", [raw])
    build(tmp_path / "solutions", tmp_path / "labs")
    lab = nbformat.read(tmp_path / "labs" / "01_x.ipynb", as_version=4)
    assert (lab.cells[1].cell_type, lab.cells[1].source) == ("raw", "plain raw text")
    assert lab.cells[1].metadata == {"tags": ["t"]}


def test_cells_without_metadata_are_accepted() -> None:
    """is_instructor_cell and student_cell take a cell without a "metadata" key (a cell built
    by hand) as an untagged cell."""
    cell = nbformat.NotebookNode({"cell_type": "code", "source": "x = 1"})
    assert is_instructor_cell(cell) is False
    new = student_cell(cell, "here")
    assert (new.source, new.metadata) == ("x = 1", {})


def test_repeated_ids_get_numbered_suffixes() -> None:
    """Repeats become ``id-1``, ``id-2``, ... (a 64-character id is cut to 60 first), skipping
    suffixes already taken, and the banner's id is never reused."""
    long = "L" * 64
    ids = ["a", "a", "a-1", "a", long, long, "generated-banner"]
    cells = [code(f"x = {i}") for i in range(len(ids))]
    for cell, cell_id in zip(cells, ids, strict=True):
        cell.id = cell_id
    solution = nbformat.NotebookNode({"cells": cells, "metadata": {}})  # no id repair
    got = [c.id for c in student_notebook(solution, "x.ipynb").cells]
    assert got == [
        "generated-banner",
        "a",
        "a-1",
        "a-1-1",
        "a-2",
        long,
        "L" * 60 + "-1",
        "generated-banner-1",
    ]


IPYKERNEL_LANGUAGE = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
}
IPYKERNEL_SPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def test_python_labs_carry_what_the_kernel_reports() -> None:
    """JupyterLab writes the kernel's kernelspec and language_info into a notebook it opens and
    marks it modified when they differ: a Python lab stores exactly what ipykernel reports (the
    Python version from the solution notebook), and names its kernel (no "Select Kernel")."""
    solution = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"},
        "colab": {"provenance": []},
        "authors": ["me"],
    }
    assert _student_metadata(solution) == {
        "kernelspec": IPYKERNEL_SPEC,
        "language_info": {**IPYKERNEL_LANGUAGE, "version": "3.11.7"},
        "colab": {"provenance": []},
    }
    assert solution["kernelspec"]["display_name"] == "Python 3"  # the input is unchanged
    nb = nbformat.v4.new_notebook(metadata={"authors": ["me"]})  # names no kernel at all
    assert student_notebook(nb, "x.ipynb").metadata == {
        "kernelspec": IPYKERNEL_SPEC,
        "language_info": IPYKERNEL_LANGUAGE,
    }
    odd = {"language_info": {"name": "python", "version": "3.11.7+local"}}
    assert "version" not in _student_metadata(odd)["language_info"]


def test_a_lab_depends_only_on_its_solution_not_on_the_python_that_builds_it() -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"language_info": {"version": "3.12.1"}}  # no name: Python
    first = render(student_notebook(nb, "x.ipynb"))
    assert first == render(student_notebook(nb, "x.ipynb"))
    assert '"version": "3.12.1"' in first


def test_other_kernels_and_languages_are_kept_as_named() -> None:
    nb = nbformat.v4.new_notebook(metadata={"language_info": {"name": "R", "version": "4.3"}})
    assert student_notebook(nb, "x.ipynb").metadata == {"language_info": {"name": "R"}}
    spec = {"display_name": "Course env", "language": "python", "name": "course"}
    nb.metadata = {"kernelspec": spec, "language_info": {"name": "python"}}
    assert student_notebook(nb, "x.ipynb").metadata == {
        "kernelspec": spec,
        "language_info": IPYKERNEL_LANGUAGE,
    }


def test_unreadable_notebook_errors_name_the_first_line_or_the_type(tmp_path, monkeypatch):
    """The reason is the first line of the error, or the error's type when it has no text."""
    path = tmp_path / "01_x.ipynb"
    for error, reason in [(ValueError("bad cell\ndetails"), "bad cell"), (KeyError(), "KeyError")]:

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(nbformat, "read", fail)
        assert build_error(read_nbformat, path) == (
            f"{path}: not a readable notebook ({reason}). Fix or restore it."
        )


def test_only_labs_with_the_whole_banner_are_removed(tmp_path: Path) -> None:
    """A stale lab is removed only if it carries both parts of the banner; notebooks that
    are not UTF-8, and folders named like notebooks, are left alone."""
    write_solution(tmp_path / "solutions", [code("x = 1")])
    labs = tmp_path / "labs"
    labs.mkdir()
    (labs / "quotes.ipynb").write_text("Generated from solutions/ by hand", encoding="utf-8")
    (labs / "latin1.ipynb").write_bytes("caf\xe9 by `labkit build`".encode("latin-1"))
    (labs / "folder.ipynb").mkdir()
    build(tmp_path / "solutions", labs)
    assert sorted(p.name for p in labs.iterdir()) == [
        "01_x.ipynb",
        "folder.ipynb",
        "latin1.ipynb",
        "quotes.ipynb",
    ]


def test_solutions_folder_error_word_for_word(tmp_path: Path) -> None:
    write_solution(tmp_path / "solutions", [code("x = 1")])
    solutions = tmp_path / "solutions"
    assert build_error(build, solutions, solutions) == (
        f"The output folder {solutions} is the solutions folder {solutions} or inside it: "
        "building there would overwrite the solutions. Use --labs labs."
    )


def test_no_solutions_error_word_for_word(tmp_path: Path) -> None:
    (tmp_path / "solutions").mkdir()
    assert build_error(build, tmp_path / "solutions", tmp_path / "labs") == (
        f"No solution notebooks in {tmp_path / 'solutions'}."
    )


def test_build_writes_by_default_and_returns_write_changes(tmp_path: Path) -> None:
    """build() writes unless check_only, creating missing parent folders, and reports each
    lab it wrote as a "write" change; a lab that is not UTF-8 is out of date, not an error."""
    write_solution(tmp_path / "solutions", [code("x = 1")])
    labs = tmp_path / "a" / "b" / "labs"
    target = labs / "01_x.ipynb"
    assert build(tmp_path / "solutions", labs) == [Change(target, "write")]
    assert is_generated_lab(target) and build(tmp_path / "solutions", labs) == []
    target.write_bytes(b"\xff\xfe not utf-8")
    assert build(tmp_path / "solutions", labs, check_only=True) == [Change(target, "write")]
    assert build(tmp_path / "solutions", labs) == [Change(target, "write")]
    assert build(tmp_path / "solutions", labs) == []


def test_labs_are_written_through_a_temporary_file_next_to_them(tmp_path, monkeypatch) -> None:
    """The write is atomic: a hidden ``.NAME.*.tmp`` in the labs folder, mode 644, renamed over
    the lab; if the rename fails the error propagates and no temporary file is left, even when
    the temporary file already vanished."""
    write_solution(tmp_path / "solutions", [code("x = 1")])
    labs = tmp_path / "labs"
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst), stat.S_IMODE(os.stat(src).st_mode)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    build(tmp_path / "solutions", labs)
    [(src, dst, mode)] = renames
    assert (src.parent, dst, mode) == (labs, labs / "01_x.ipynb", 0o644)
    assert src.name.startswith(".01_x.ipynb.") and src.name.endswith(".tmp")

    def failing_replace(src, dst, vanish=False):
        if vanish:
            os.unlink(src)
        raise OSError("disk full")

    for vanish in (False, True):
        write_solution(tmp_path / "solutions", [code(f"x = {2 + vanish}")])
        monkeypatch.setattr(os, "replace", lambda s, d, v=vanish: failing_replace(s, d, v))
        with pytest.raises(OSError, match="^disk full$"):
            build(tmp_path / "solutions", labs)
        assert sorted(p.name for p in labs.iterdir()) == ["01_x.ipynb"]


def test_the_colab_badge_names_the_notebook(tmp_path: Path) -> None:
    """The release badge in a lab links to that lab's own file."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.labkit]\nrelease_url = "https://github.com/o/r"\nrelease_ref = "v1"\n',
        encoding="utf-8",
    )
    write_solution(tmp_path / "solutions", [markdown("<!-- Open in Colab: x -->")])
    build(tmp_path / "solutions", tmp_path / "labs")
    lab = nbformat.read(tmp_path / "labs" / "01_x.ipynb", as_version=4)
    assert "o/r/blob/v1/labs/01_x.ipynb" in lab.cells[1].source


def test_labs_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Under an ASCII locale (no UTF-8 mode), non-ASCII solutions still build, and a second
    build finds the labs up to date (they are written and read as UTF-8)."""
    write_solution(tmp_path / "solutions", [markdown("Café: ∑ attention")])
    script = (
        "import sys; from pathlib import Path; from labkit.build import build; "
        "s, l = Path(sys.argv[1]), Path(sys.argv[2]); build(s, l); print(len(build(s, l)))"
    )
    env = {
        **os.environ,
        "LC_ALL": "C",
        "LANG": "C",
        "PYTHONUTF8": "0",
        "PYTHONCOERCECLOCALE": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1]),  # this labkit, as imported here
    }
    args = [sys.executable, "-c", script, str(tmp_path / "solutions"), str(tmp_path / "labs")]
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "0"), result.stderr
    text = (tmp_path / "labs" / "01_x.ipynb").read_text(encoding="utf-8")
    assert "Café: ∑ attention" in text
    build(tmp_path / "solutions", tmp_path / "here")  # the same build in this process's locale
    assert (tmp_path / "here" / "01_x.ipynb").read_bytes() == text.encode("utf-8")


# The reference solution as code (the definitions rule) is tested in test_notebooks_definitions.py.
