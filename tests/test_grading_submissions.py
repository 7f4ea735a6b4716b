"""labkit.grading.submissions: who handed in what, and notebooks read however they were saved."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import nbformat
import pytest

from labkit.grading.submissions import NotebookError, discover, read_notebook


def notebook(source: str = "def f(x):\n    return x\n") -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    return nbformat.writes(nb)


def test_folders_are_students_and_loose_files_are_grouped(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "lab.ipynb").write_text(notebook())
    (tmp_path / "ann" / "sub").mkdir()
    (tmp_path / "ann" / "sub" / "old.ipynb").write_text(notebook())
    (tmp_path / "ann" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "ann" / ".ipynb_checkpoints" / "lab-checkpoint.ipynb").write_text(notebook())
    (tmp_path / "bob.ipynb").write_text(notebook())
    (tmp_path / "carl_42_1001_lab01.ipynb").write_text(notebook())
    (tmp_path / "carl_LATE_42_1002_lab01-1.ipynb").write_text(notebook())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "notes.pdf").write_bytes(b"%PDF")
    subs = {s.student: s for s in discover(tmp_path, tmp_path / "unpacked")}
    assert set(subs) == {"ann", "bob", "carl_42", "dora"}
    assert [f.name for f in subs["ann"].files] == ["lab.ipynb", "sub/old.ipynb"]
    assert len(subs["carl_42"].files) == 2
    assert subs["dora"].files == [] and subs["dora"].others == ["notes.pdf"]


def test_a_zip_is_unpacked_safely(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export/submission_1/lab.ipynb", notebook())
        zf.writestr("export/submission_2/lab.ipynb", notebook())
        zf.writestr("export/submission_2/../../../escape.ipynb", notebook())
        zf.writestr("__MACOSX/export/._junk", "x")
    subs = discover(archive, tmp_path / "unpacked")
    assert [s.student for s in subs] == ["submission_1", "submission_2"]
    assert not (tmp_path / "escape.ipynb").exists()
    assert all(f.path.is_relative_to(tmp_path / "unpacked") for s in subs for f in s.files)


def test_scripts_count_only_without_a_notebook(tmp_path: Path) -> None:
    (tmp_path / "eve").mkdir()
    (tmp_path / "eve" / "lab.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "fay").mkdir()
    (tmp_path / "fay" / "lab.py").write_text("x = 1\n")
    (tmp_path / "fay" / "lab.ipynb").write_text(notebook())
    subs = {s.student: s for s in discover(tmp_path, tmp_path / "u")}
    assert [f.name for f in subs["eve"].files] == ["lab.py"]
    assert [f.name for f in subs["fay"].files] == ["lab.ipynb"] and subs["fay"].others == ["lab.py"]
    assert "Python script" in read_notebook(subs["eve"].files[0].path).notes[0]


def test_gradescope_submission_folder_is_one_student(tmp_path: Path) -> None:
    (tmp_path / "a.ipynb").write_text(notebook())
    (tmp_path / "b.ipynb").write_text(notebook())
    (subs,) = discover(tmp_path, tmp_path / "u", single=True)
    assert subs.student == "submission" and len(subs.files) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b'{"cells": [{"cell_type": "code", "sou', "JSON breaks at line 1"),
        (b"[1, 2, 3]", "not a Jupyter notebook"),
        (b'{"metadata": {}}', "no list of cells"),
        (b'{"nbformat": 2, "worksheets": []}', "too old"),
    ],
    ids=["empty", "truncated", "list", "no-cells", "nbformat2"],
)
def test_unreadable_notebooks_say_why(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "lab.ipynb"
    path.write_bytes(content)
    with pytest.raises(NotebookError, match=message):
        read_notebook(path)


def test_old_formats_and_other_encodings_are_read(tmp_path: Path) -> None:
    v4 = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Titre"), nbformat.v4.new_code_cell("x = 'é'")]
    )
    v3 = tmp_path / "v3.ipynb"
    v3.write_text(nbformat.writes(nbformat.convert(copy.deepcopy(v4), 3)))
    read = read_notebook(v3)
    assert [c.kind for c in read.cells] == ["markdown", "code"] and "format 3" in read.notes[0]
    latin = tmp_path / "latin.ipynb"
    latin.write_bytes(nbformat.writes(v4).encode("cp1252"))
    read = read_notebook(latin)
    assert read.code[0].source == "x = 'é'" and "not UTF-8" in read.notes[0]
    bom = tmp_path / "bom.ipynb"
    bom.write_bytes(nbformat.writes(v4).encode("utf-16"))
    assert read_notebook(bom).code[0].source == "x = 'é'"


def test_odd_cells_are_skipped_with_a_note(tmp_path: Path) -> None:
    data = {
        "nbformat": 4,
        "cells": [
            {"cell_type": "code", "source": ["def f(x):\n", "    return x\n"], "outputs": []},
            {"cell_type": "code", "source": 42},
            "not a cell",
            {"cell_type": "code", "source": "y = 2", "outputs": [{"text": "x" * 10**6}]},
        ],
    }
    path = tmp_path / "odd.ipynb"
    path.write_text(json.dumps(data))
    read = read_notebook(path)
    assert [c.source for c in read.code] == ["def f(x):\n    return x\n", "y = 2"]
    assert [c.index for c in read.code] == [1, 4] and len(read.notes) == 2


# ----- awkward names and entries: every one gets a row or a note -------------------------------
def test_awkward_file_names_each_get_a_traceable_row(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "class"
    folder.mkdir()
    raw = os.fsencode(str(folder)) + b"/caf\xe9_lab.ipynb"  # Latin-1 bytes: not UTF-8
    with open(raw, "w") as handle:
        handle.write(notebook())
    (folder / "Jos\u00e9.ipynb").write_text(notebook())  # NFC
    (folder / "Jose\u0301.ipynb").write_text(notebook())  # NFD: the same name, typed another way
    (folder / ".hidden.ipynb").write_text(notebook())
    (folder / "ALICE.ipynb").write_text(notebook())
    (folder / "alice.ipynb").write_text(notebook())
    inventory = []
    subs = discover(folder, tmp_path / "u", inventory=inventory)
    by_source = {s.source: s for s in subs}
    assert "caf\\xe9_lab.ipynb" in by_source  # shown escaped, graded
    jose = [s for s in subs if s.source.startswith("Jos")]
    assert len(jose) == 1 and len(jose[0].files) == 2  # one student, both files
    assert any(s.source == ".hidden.ipynb" for s in subs)
    keys = [s.student.lower() for s in subs]
    assert len(keys) == len(set(keys))  # no two rows share a key, whatever the case
    assert len(inventory) == 6 and all(row[1] for row in inventory)
    for sub in subs:
        sub.input_hash()  # bytes that are not UTF-8 hash too


def test_symlinks_and_special_files_are_refused_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "class"
    (folder / "mallory").mkdir(parents=True)
    secret = tmp_path / "solution.ipynb"
    secret.write_text(notebook("SOLUTION = 'secret'"))
    (folder / "mallory" / "lab.ipynb").symlink_to(secret)
    (folder / "trudy.ipynb").symlink_to(secret)
    (folder / "eve").mkdir()
    (folder / "eve" / "link").symlink_to(tmp_path, target_is_directory=True)
    import os

    os.mkfifo(folder / "eve" / "pipe.ipynb")
    subs = {s.student: s for s in discover(folder, tmp_path / "u")}
    assert subs["mallory"].files == [] and "symbolic link" in subs["mallory"].refused[0][1]
    assert subs["trudy"].files == [] and subs["trudy"].refused
    assert {name for name, _ in subs["eve"].refused} == {"link", "pipe.ipynb"}


def test_zip_entries_with_dots_backslashes_and_links(tmp_path: Path) -> None:
    import stat as st

    archive = tmp_path / "class.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("class/ann/.lab.ipynb", notebook())
        zf.writestr("class\\bob\\lab.ipynb", notebook())  # made on Windows
        link = zipfile.ZipInfo("class/carl/lab.ipynb")
        link.external_attr = (st.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/work/solutions/01_attribution.ipynb")
        zf.writestr("class/dora/../../../../etc/evil.ipynb", notebook())
    inventory = []
    subs = {s.student: s for s in discover(archive, tmp_path / "u", inventory=inventory)}
    assert [f.name for f in subs["ann"].files] == [".lab.ipynb"]
    assert [f.name for f in subs["bob"].files] == ["lab.ipynb"]
    assert "carl" not in subs or not subs["carl"].files
    assert any("link" in became for _, became in inventory)
    assert not (tmp_path / "etc").exists() and not Path("/etc/evil.ipynb").exists()
    assert all(f.path.is_relative_to(tmp_path / "u") for s in subs.values() for f in s.files)
