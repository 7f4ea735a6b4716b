"""What one grading run needs to know: the lab and its exercises, the hidden variants drawn from
the instructor's seed, the time and memory limits, and the points.

Hidden variants: every check runs on the notebook's own problems (variant 0) and on
``hidden_variants`` more, whose seeds, shapes and models come from ``seed``. The seed is given
at grading time (``--seed`` or ``LABKIT_GRADING_SEED``) and kept only in the output folder, so no
student-visible file holds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import labkit

SEED_VARIABLE = "LABKIT_GRADING_SEED"


class GradingError(RuntimeError):
    """Something the instructor must fix before grading can go on (never a student's fault)."""


@dataclass(frozen=True)
class Limits:
    """What one submission may use. Times are wall-clock seconds."""

    memory_mb: int = 4096  # address space of the worker process (torch itself takes ~1.5 GB)
    seconds_per_call: float = 10.0  # caps each check's own limit on one call of student code
    seconds_per_exercise: float = 60.0  # one exercise, all its variants together
    seconds_per_submission: float = 600.0  # everything, including restarts after a crash
    output_mb: int = 64  # the largest file a submission may write (its printed output included)
    processes: int = 256  # processes and threads of one submission, all together
    tmp_mb: int = 64  # the worker's /tmp (in memory)


@dataclass
class Lab:
    """A lab as the grader sees it."""

    number: str  # "01"
    checks_module: str  # "labkit.checks.lab01"
    notebook: str  # "01_attribution.ipynb" (its name in labs/ and solutions/)
    exercises: dict[str, Any]  # function name in the notebook -> its check

    @property
    def title(self) -> str:
        return f"Lab {self.number}"


def lab_number(lab: str) -> str:
    """'1', '01', 'lab01', '01_attribution' or 'labs/01_attribution.ipynb' -> '01'."""
    match = re.search(r"(\d+)", Path(str(lab)).name)
    if not match:
        raise GradingError(f"'{lab}' does not name a lab: give its number, e.g. 01.")
    return f"{int(match.group(1)):02d}"


def load_lab(
    lab: str, notebook_dirs: list[Path] | None = None, notebook: str = "", module: str = ""
) -> Lab:
    """The lab's checks (``labkit.checks.labNN``, or ``module``) and its notebook's name."""
    number = lab_number(lab)
    module_name = module or f"labkit.checks.lab{number}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise GradingError(
            f"labkit has no checks for lab {number} ({module_name} is missing)."
        ) from err
    exercises = getattr(module, "EXERCISES", None)
    if not isinstance(exercises, dict) or not exercises:
        raise GradingError(
            f"{module_name} has no EXERCISES table (function name in the notebook -> check), "
            "so the grader does not know what to grade."
        )
    if not notebook:
        for folder in notebook_dirs or []:
            found = sorted(Path(folder).glob(f"{number}_*.ipynb"))
            if found:
                notebook = found[0].name
                break
    return Lab(number, module_name, notebook or f"{number}.ipynb", dict(exercises))


def hidden_variants(seed: str, lab: str, count: int) -> list[int]:
    """``count`` distinct variant numbers (never 0) drawn from the instructor's seed."""
    rng = random.Random(f"labkit-grading:{lab_number(lab)}:{seed}")
    variants: list[int] = []
    while len(variants) < count:
        v = rng.randrange(1, 2**31 - 1)
        if v not in variants:
            variants.append(v)
    return variants


@dataclass
class RunConfig:
    """Everything that decides a grade; saved in the output folder (it holds the seed)."""

    lab: str
    seed: str
    hidden: int = 2  # hidden variants per check, on top of the notebook's own problems
    limits: Limits = field(default_factory=Limits)
    points: dict = field(default_factory=dict)  # the lab's table from the points file
    labkit_version: str = labkit.__version__

    @property
    def variants(self) -> list[int]:
        return [0, *hidden_variants(self.seed, self.lab, self.hidden)]

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["variants"] = self.variants
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunConfig:
        return cls(
            lab=str(data["lab"]),
            seed=str(data["seed"]),
            hidden=int(data.get("hidden", 2)),
            limits=Limits(**data.get("limits", {})),
            points=dict(data.get("points", {})),
            labkit_version=str(data.get("labkit_version", "")),
        )

    def fingerprint(self, lab: Lab, solution: Path | None = None) -> str:
        """Changes whenever a grade could change: the seed, variants, limits and points, every
        file of labkit (code and data, the checks, guards, kit, worker and grader alike), and
        the solution notebook the references come from."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode())
        for path in grade_inputs(solution):
            where = (
                path.relative_to(PACKAGE_ROOT) if path.is_relative_to(PACKAGE_ROOT) else "solution"
            )
            digest.update(f"{where}".encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]


PACKAGE_ROOT = Path(labkit.__file__).resolve().parent


def grade_inputs(solution: Path | None = None) -> list[Path]:
    """Every file a grade depends on: labkit's sources and data, and the solution notebook."""
    found = sorted(
        p
        for p in PACKAGE_ROOT.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    return found + ([Path(solution).resolve()] if solution is not None else [])
