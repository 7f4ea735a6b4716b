"""Every solution notebook passes nbval; every student notebook runs with exercises unattempted."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
CELL_TIMEOUT = 600


@pytest.mark.notebook
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_passes_nbval(path: Path) -> None:
    """Runs every cell and compares its outputs with the stored ones (after sanitising)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            str(path),
            "--sanitize-with",
            str(ROOT / "tests" / "nbval_sanitize.cfg"),
            f"--nbval-cell-timeout={CELL_TIMEOUT}",
            "-o",
            "addopts=",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]


@pytest.mark.notebook
@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_student_notebook_runs_unattempted(path: Path, tmp_path: Path) -> None:
    """A student who runs everything before writing any code sees no crash."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    text = "".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        for out in cell.get("outputs", [])
    )
    assert "not attempted" in text  # the checks said so, instead of crashing
