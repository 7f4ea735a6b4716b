"""The explorers under ipywidgets 7.7.1, the version Colab ships (labkit allows >=7.7,<9).

``make test`` builds a small environment with ipywidgets 7 (``make ipywidgets7``: the widget
packages only, everything else read from the main environment through a .pth file) and this
test runs the explorers' own tests in it. ``LABKIT_IPYWIDGETS7`` names another interpreter.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("LABKIT_IPYWIDGETS7", Path(sys.prefix) / "ipywidgets7/bin/python"))
WIDGET_TESTS = [
    "tests/test_widgets_display.py",
    "tests/test_widgets_attribution.py",
    "tests/test_widgets_tracing.py",
    "tests/test_widgets_patching.py",
]


def test_explorers_work_with_ipywidgets_7() -> None:
    if not PYTHON.exists():
        pytest.skip(f"no ipywidgets 7 environment at {PYTHON}: run make ipywidgets7")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    version = subprocess.run(
        [PYTHON, "-c", "import ipywidgets; print(ipywidgets.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.startswith("7."), f"{PYTHON} has ipywidgets {version}, not 7.x"
    result = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *WIDGET_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    print(f"ipywidgets {version}: {result.stdout.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_pyproject_accepts_colab_ipywidgets() -> None:
    """Installing labkit on Colab must not replace its ipywidgets 7.7.1."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(
        Requirement(r).specifier for r in project["dependencies"] if r.startswith("ipywidgets")
    )
    assert spec.contains("7.7.1") and spec.contains("8.1.9") and not spec.contains("9.0.0")
