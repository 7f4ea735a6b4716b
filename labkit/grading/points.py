"""The instructor's points file: how much each exercise, each sub-test and each written
question is worth. One TOML file, by default ``grading.toml`` in the working directory::

    [lab01.exercises]            # points per exercise (its sub-tests share them)
    saliency = 1
    integrated_gradients = 3

    [lab02.parts.restoration_grid]   # points per sub-test, by the name its check gives it
    "resid grid" = 2

    [lab01.written]              # points per written question (graded by hand)
    q1 = 2

Without a file, or for anything it leaves out, the checks' own points count (and 1 point per
written question). A sub-test's points come from ``parts`` (or the check); when the exercise has
a total in ``exercises``, all its sub-tests are scaled to add up to it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from labkit.grading.config import GradingError, lab_number

DEFAULT_FILE = "grading.toml"
WRITTEN_DEFAULT = 1.0


def load_points(path: Path | None, lab: str) -> dict:
    """The lab's table from the points file ({} when there is no file)."""
    if path is None:
        path = Path(DEFAULT_FILE)
        if not path.exists():
            return {}
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise GradingError(f"The points file {path} does not exist.") from err
    except tomllib.TOMLDecodeError as err:
        raise GradingError(f"The points file {path} is not valid TOML: {err}.") from err
    table = data.get(f"lab{lab_number(lab)}", {})
    for key in ("exercises", "parts", "written"):
        if not isinstance(table.get(key, {}), dict):
            raise GradingError(f"{path}: [lab{lab_number(lab)}.{key}] must be a table.")
    for name, value in _numbers(table):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise GradingError(f"{path}: {name} must be a number >= 0, not {value!r}.")
    return table


def _numbers(table: dict):
    for name, value in table.get("exercises", {}).items():
        yield f"exercises.{name}", value
    for exercise, parts in table.get("parts", {}).items():
        if not isinstance(parts, dict):
            yield f"parts.{exercise}", parts
            continue
        for name, value in parts.items():
            yield f"parts.{exercise}.{name!r}", value
    for name, value in table.get("written", {}).items():
        yield f"written.{name}", value


def check_names(table: dict, exercises: list[str]) -> list[str]:
    """Names in the points file that are not exercises of the lab (likely typos)."""
    known = set(exercises)
    named = set(table.get("exercises", {})) | set(table.get("parts", {}))
    return sorted(named - known)


def part_points(table: dict, exercise: str, parts: list[tuple[str, float]]) -> list[float]:
    """The points of each of an exercise's parts, given their names and default points."""
    overrides = table.get("parts", {}).get(exercise, {})
    points = [float(overrides.get(name, default)) for name, default in parts]
    total = table.get("exercises", {}).get(exercise)
    if total is not None:
        current = sum(points)
        if current > 0:
            points = [p * float(total) / current for p in points]
        elif points:
            points = [float(total) / len(points)] * len(points)
    return points


def written_points(table: dict, question: str) -> float:
    return float(table.get("written", {}).get(question, WRITTEN_DEFAULT))


def load_settings(path: Path | None) -> dict:
    """The ``[settings]`` table of the points file: ``share_model_answers = true`` puts the
    model answer of each written question into every student's feedback."""
    if path is None:
        path = Path(DEFAULT_FILE)
        if not path.exists():
            return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    settings = data.get("settings", {})
    return settings if isinstance(settings, dict) else {}
