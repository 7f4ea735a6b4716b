"""make lab works on copies of the labs in a git-ignored folder, never on labs/ itself."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def workspace(folder: Path) -> str:
    return subprocess.run(
        ["make", "-s", "workspace", f"WORKSPACE={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_workspace_copies_new_labs_and_keeps_edited_ones(tmp_path: Path) -> None:
    folder = tmp_path / "my-labs"
    labs = sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))
    assert "new lab" in workspace(folder)
    assert sorted(p.name for p in folder.glob("*.ipynb")) == labs
    edited = folder / labs[0]
    edited.write_text("my own work")
    (folder / labs[-1]).unlink()  # a lab added to the course after the first run
    workspace(folder)
    assert edited.read_text() == "my own work"
    assert (folder / labs[-1]).read_bytes() == (ROOT / "labs" / labs[-1]).read_bytes()


def test_workspace_is_git_ignored_and_opened_by_make_lab() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "WORKSPACE ?= my-labs" in makefile
    assert "--ServerApp.root_dir=$(WORKSPACE)" in makefile
    assert "my-labs/" in (ROOT / ".gitignore").read_text().splitlines()
