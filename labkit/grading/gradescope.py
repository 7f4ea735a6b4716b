"""Gradescope: ``labkit gradescope 01`` writes the autograder zip, and
``python -m labkit.grading.gradescope`` is what it runs for each submission.

The zip holds ``setup.sh`` (run once by Gradescope, as root, on its Ubuntu image: Python 3.11+,
CPU torch, this labkit), ``run_autograder`` (run for every submission), labkit's source, the
solution notebook (the grader computes every expected value with it), and ``grading.json``: the
lab, the hidden seed, the points and the limits, decided when the zip was written (the solution
is checked against them then).

For each submission the same grader as ``labkit grade`` runs on ``/autograder/submission`` (one
student) and writes ``/autograder/results/results.json``. Gradescope's container usually allows
no namespaces: workers then run as their own unprivileged uid, and everything the grader keeps
(``/autograder/source``, the installed ``labkit.grading``, the results) is made readable by
root only before any student code runs (see docs/instructors.md for what holds there).
Written answers are not in it: grade them as manual questions on Gradescope.
``AUTOGRADER_ROOT`` moves ``/autograder`` (for tests).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import labkit
from labkit.grading.config import GradingError, Limits, RunConfig
from labkit.grading.gradebook import Gradebook, write_atomic
from labkit.grading.grader import (
    Grading,
    Options,
    check_reference,
    grade,
    load_answers,
    preload_modules,
    resolve,
)
from labkit.grading.sandbox import Sandbox

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, on its Ubuntu image (22.04 or 24.04) to build the
# autograder: a Python 3.11+ virtual environment with CPU torch and labkit.
set -euo pipefail
cd /autograder/source
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
PY=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    apt-get install -y -qq python3.11 python3.11-venv
    PY=python3.11
else
    apt-get install -y -qq "python3-venv" || true
    apt-get install -y -qq "python3.$(python3 -c 'import sys; print(sys.version_info[1])')-venv" \\
        || true
fi
"$PY" -m venv /autograder/venv
/autograder/venv/bin/pip install -q --upgrade pip
# The CPU build of torch: the default one downloads gigabytes of CUDA libraries.
/autograder/venv/bin/pip install -q "torch=={torch}" --index-url https://download.pytorch.org/whl/cpu
/autograder/venv/bin/pip install -q -c constraints.txt /autograder/source
/autograder/venv/bin/python -c "import labkit.grading.gradescope"  # fail the build, not a student
# Only root may read the grader's files: the workers run student code as other users.
chmod -R go-rwx /autograder/source
GRADING="$(/autograder/venv/bin/python -c \
    'import labkit.grading, os; print(os.path.dirname(labkit.grading.__file__))')"
chmod -R go-rwx "$GRADING"
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for every submission: it grades /autograder/submission and writes
# /autograder/results/results.json. AUTOGRADER_ROOT and LABKIT_PYTHON are for local tests.
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PY="${LABKIT_PYTHON:-/autograder/venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
umask 077
cd "$ROOT"  # python -m puts the working folder first on its path: not a folder with a labkit
exec "$PY" -m labkit.grading.gradescope "$ROOT"
"""

SOURCE_README = "labkit, packaged for a Gradescope autograder (see setup.sh).\n"


def write_autograder(
    lab: str,
    out: Path | None = None,
    *,
    seed: str | None = None,
    hidden: int = 2,
    limits: Limits | None = None,
    points_file: Path | None = None,
    solutions: Path = Path("solutions"),
    labs: Path = Path("labs"),
    check_reference: bool = True,
    checks: str = "",
) -> Path:
    """Write the autograder zip for ``lab``; returns its path."""
    root = Path(labkit.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        raise GradingError(f"labkit's source is not at {root}: run this from the repository.")
    with tempfile.TemporaryDirectory(prefix="labkit-gradescope-") as scratch:
        options = Options(
            lab=lab,
            submissions=Path(scratch),
            out=Path(scratch) / "out",
            seed=seed,
            hidden=hidden,
            limits=limits or Limits(),
            points_file=points_file,
            solutions=solutions,
            labs=labs,
            checks=checks,
            jobs=1,
        )
        book = Gradebook(options.out)
        lab_info, config, _ = resolve(options, book)
        book.create()
        solution = Path(solutions) / lab_info.notebook
        if not solution.exists():
            raise GradingError(
                f"No solution notebook {solution}: the autograder computes every expected value "
                "with it. Pass --solutions."
            )
        lab_notebook = Path(labs) / lab_info.notebook
        preload = preload_modules(lab_notebook if lab_notebook.exists() else solution)
        if check_reference:
            _check(solution, lab_info, config, book, preload)
        data = {
            "lab": lab_info.number,
            "checks": lab_info.checks_module,
            "notebook": lab_info.notebook,
            "config": config.to_json(),
            "exercises": list(lab_info.exercises),
            "questions": [],  # graded by hand on Gradescope
            "preload": preload,
        }
    out = Path(out or f"autograder-lab{lab_info.number}.zip")
    torch_version = _torch_version()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        _add(zf, "setup.sh", SETUP_SH.replace("{torch}", torch_version), executable=True)
        _add(zf, "run_autograder", RUN_AUTOGRADER, executable=True)
        _add(zf, "grading.json", json.dumps(data, indent=2) + "\n")
        _add(zf, "README.md", SOURCE_README)
        for name in ("pyproject.toml", "constraints.txt"):
            if (root / name).exists():
                _add(zf, name, (root / name).read_text(encoding="utf-8"))
        for path in sorted((root / "labkit").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, str(path.relative_to(root)))
        zf.write(solution, f"solutions/{solution.name}")
    return out


def _check(solution: Path, lab, config: RunConfig, book: Gradebook, preload: list[str]) -> None:
    sandbox = Sandbox(config.limits, preload=preload)
    grading = Grading(lab, config, load_answers(lab, solution))
    try:
        sandbox.start()
        check_reference(solution, sandbox, grading, book, config.fingerprint(lab, solution))
    finally:
        sandbox.close()


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _add(zf: zipfile.ZipFile, name: str, text: str, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o755 if executable else 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, text)


# ----- on Gradescope -----------------------------------------------------------------------------
def run_autograder(root: Path) -> int:
    """Grade ``root/submission`` and write ``root/results/results.json`` (always)."""
    root = Path(root)
    results = root / "results" / "results.json"
    out = Path(tempfile.mkdtemp(prefix="labkit-grades-"))
    try:
        config_path = root / "source" / "grading.json"
        for secret in (root / "source", out):  # the seed, the solution: root's alone
            _private(secret)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        grade(
            Options(
                lab=config["lab"],
                submissions=root / "submission",
                out=out,
                single=True,
                config=config,
                checks=config.get("checks", ""),
                check_reference=False,
                progress=False,
                solutions=root / "source" / "solutions",
                labs=root / "no-labs",
            )
        )
        text = (out / "results" / "submission" / "results.json").read_text(encoding="utf-8")
        write_atomic(results, text)
        return 0
    except BaseException as err:  # noqa: BLE001 -- Gradescope must always get a results.json
        message = (
            f"The autograder itself failed ({type(err).__name__}: {err}). This is not about "
            "your code: tell your instructor."
        )
        write_atomic(results, json.dumps({"score": 0, "output": message, "tests": []}) + "\n")
        print(message, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _private(path: Path) -> None:
    """Readable by its owner only, everything below it too."""
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chmod(os.path.join(folder, name), 0o700 if name in dirs else 0o600)
    os.chmod(path, 0o700)


if __name__ == "__main__":
    sys.exit(run_autograder(Path(sys.argv[1] if len(sys.argv) > 1 else "/autograder")))
