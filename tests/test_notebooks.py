"""Every solution notebook passes nbval, draws the same figure data as before and works with
the model on another device; every student notebook runs with exercises unattempted, and each
of its checks says so.

nbval compares printed outputs but skips images. So while nbval runs a solution notebook, every
figure it shows also saves the numbers and labels it draws (tests/support/figures.py); they are
compared with ``tests/data/figures/<notebook>.npz`` (3 significant digits of each array's
largest value, as nbval compares printed numbers). After an intended change, record them again
with ``LABKIT_RECORD_FIGURES=1 pytest tests/test_notebooks.py -k <notebook>`` and commit it.

Claims (labkit.claims) run strict there (``LABKIT_STRICT_CLAIMS=1``): a sentence whose numbers
drifted stops the notebook. The same run is watched by tests/support/device_guard.py as if the
model sat on a GPU (Colab's GPU runtime): a line that combines a tensor made without
``device=`` with the model's tensors fails the test, with its cell (one run of each notebook
serves all three comparisons).
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from support.device_guard import ADVICE, KERNEL_STARTUP, describe, read_log
from support.figures import compare_figure_data, ipython_dir_recording_figures, load_recorded

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
CELL_TIMEOUT = 600
FIGURES = ROOT / "tests" / "data" / "figures"
REPORT = re.compile(r"^\[(passed|failed|not attempted)\] Exercise ")  # a check's text/plain


@pytest.mark.notebook
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_passes_nbval(path: Path, tmp_path: Path) -> None:
    """Runs every cell and compares its outputs with the stored ones (after sanitising), the
    data of every figure it shows with the recorded data, and finds CPU tensors that meet the
    model's tensors."""
    shown = tmp_path / "figures"
    shown.mkdir()
    ipython_dir = ipython_dir_recording_figures(tmp_path / "ipython", shown)
    mixes = tmp_path / "device_mixes.jsonl"
    (tmp_path / "ipython" / "profile_default" / "startup" / "01-device-guard.py").write_text(
        KERNEL_STARTUP.format(tests=str(ROOT / "tests" / "support"), log=str(mixes)),
        encoding="utf-8",
    )
    env = {**os.environ, "IPYTHONDIR": ipython_dir, "LABKIT_STRICT_CLAIMS": "1"}
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
        env=env,
        capture_output=True,
        text=True,
    )
    sources = [cell.source for cell in nbformat.read(path, as_version=4).cells]
    found = describe(read_log(mixes), sources, path.name, str(ROOT))
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:] + "\n".join(found)
    assert mixes.exists(), "the device guard was not installed: its startup file did not run"
    assert not found, ADVICE + "\n".join(found)
    got = load_recorded(shown)
    assert got, "no figure was recorded: the recording startup file did not run"
    reference = FIGURES / f"{path.stem}.npz"
    if os.environ.get("LABKIT_RECORD_FIGURES") == "1":
        FIGURES.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(reference, **got)
    assert reference.exists(), (
        f"{path.stem}: nbval passed, but its figure data were never recorded: record them "
        "(see the top of this file) and commit tests/data/figures/."
    )
    with np.load(reference) as stored:
        expected = {name: stored[name] for name in stored.files}
    problems = compare_figure_data(got, expected)
    assert not problems, f"{path.stem}: the figures draw other data:\n" + "\n".join(problems)


@pytest.mark.notebook
@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_student_notebook_runs_unattempted(path: Path, tmp_path: Path) -> None:
    """A student who runs everything before writing any code sees no crash, and every
    exercise's check cell says "not attempted": one report per exercise, none passed or failed."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    exercises = importlib.import_module(f"labkit.checks.lab{path.stem[:2]}").EXERCISES
    reports = [
        (i, out["data"]["text/plain"])
        for i, cell in enumerate(notebook.cells)
        for out in cell.get("outputs", [])
        if out.get("output_type") == "display_data"
        and REPORT.match(out.get("data", {}).get("text/plain", ""))
    ]
    statuses = {REPORT.match(text)[1] for _, text in reports}
    assert statuses == {"not attempted"}, reports  # no check passes or fails on a stub
    for function, check in exercises.items():
        call = re.compile(rf"\bcheck_\w+\(\s*{re.escape(function)}\s*\)")
        cells = [i for i, cell in enumerate(notebook.cells) if call.search(cell.source)]
        assert len(cells) == 1, f"{function}: checked in cells {cells}, expected exactly one"
        said = [text for i, text in reports if i == cells[0]]
        assert len(said) == 1, f"{function}'s check cell shows {len(said)} reports: {said}"
        assert said[0].startswith(f"[not attempted] {check.check_name} ("), said[0]
    assert len(reports) == len(exercises), [text for _, text in reports]
