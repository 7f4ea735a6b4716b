"""Recorded outcomes -> scores, in the grader's own process (which never runs student code).

Each check runs again here, on the same variant as in the worker, with a
:class:`~labkit.checks.transport.Replayer` handing it what the student's code returned: the
problems and the expected answers are computed here, and so are the comparisons. Whatever the
submission did to torch or labkit inside its worker changes nothing here.

An exercise is tested on the notebook's problem (variant 0) and on the hidden variants. A
sub-test (a part of the check) earns its points only if it passes on every variant.
"""

from __future__ import annotations

import io
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from labkit.checks.core import run_check
from labkit.checks.results import CheckFailed, CheckResult
from labkit.checks.transport import Replayer
from labkit.grading.points import part_points
from labkit.grading.sandbox import read_capped

MAX_RECORDING_BYTES = 256 * 2**20
# Checks seed torch's global random generator: one replay at a time in this process.
_REPLAY_LOCK = threading.Lock()
_STRUCTURES: dict[tuple[str, str], list[tuple[str, float]]] = {}


@dataclass
class PartScore:
    name: str
    points: float
    passed: bool | None
    message: str = ""

    @property
    def score(self) -> float:
        return self.points if self.passed else 0.0


@dataclass
class ExerciseResult:
    """One exercise of one submission, as the gradebook and the feedback show it."""

    function: str  # its name in the notebook
    title: str  # the check's name, "Exercise 1.1: saliency"
    status: str  # passed, failed, not attempted, missing
    score: float
    max_score: float
    parts: list[PartScore] = field(default_factory=list)
    message: str = ""  # what failed first, for the student

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ExerciseResult:
        parts = [PartScore(**p) for p in data.get("parts", [])]
        return cls(**{**data, "parts": parts})


class CrashReplayer(Replayer):
    """A Replayer for a run that was cut short: calls it never reached get ``reason``."""

    def __init__(self, outcomes: dict, reason: str = "") -> None:
        super().__init__(outcomes)
        self.reason = reason

    def call(self, t, fn, args, kwargs):
        if self.reason and t._call_key() not in self.outcomes:
            raise CheckFailed(self.reason)
        return super().call(t, fn, args, kwargs)


def _never_called(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the grader tried to call student code")


def replay(check: Any, variant: int, outcomes: dict, reason: str = "") -> CheckResult:
    """Run ``check`` on ``variant`` with recorded outcomes (never calling student code)."""
    with _REPLAY_LOCK:
        return run_check(
            check.body,
            check.check_name,
            check.points,
            _never_called,
            variant=variant,
            runner=CrashReplayer(outcomes, reason),
            timeout=None,
        )


def structure(check: Any, function: str) -> list[tuple[str, float]]:
    """The check's parts (name, default points) on the notebook's problem."""
    key = (getattr(check.body, "__module__", ""), function)
    if key not in _STRUCTURES:
        result = replay(check, 0, {}, "not run")
        parts = [(p.name, p.points) for p in result.parts if p.name or p.points]
        _STRUCTURES[key] = parts or [("", float(check.points))]
    return _STRUCTURES[key]


def load_recording(path: Path) -> tuple[dict | None, str]:
    """A worker's recording, loaded as plain data only; (None, why) when unusable."""
    data = read_capped(path, MAX_RECORDING_BYTES)
    if data is None:
        return None, "missing"
    try:
        outcomes = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 -- anything a hostile file can make the loader raise
        outcomes = None
    if not isinstance(outcomes, dict):
        return None, (
            "The record of your results could not be read safely (your code may have written "
            "into the grader's files, or replaced torch.save)."
        )
    return outcomes, ""


def score_exercise(
    check: Any,
    function: str,
    variants: list[int],
    info: dict | None,
    recordings: dict[int, dict],
    stop: tuple[int, str] | None,
    table: dict,
    notes: dict[str, str] | None = None,
) -> ExerciseResult:
    """Score one exercise from the worker's report.

    ``info``: what the worker found about the function (None: it never got there);
    ``recordings``: variant index -> outcomes; ``stop``: (variant index, why) if the worker was
    stopped or crashed during this exercise; ``notes``: extra advice keyed by error names.
    """
    parts = structure(check, function)
    points = part_points(table, function, parts)
    max_score = sum(points)

    def failed(status: str, message: str) -> ExerciseResult:
        scored = [
            PartScore(n, p, None if status != "failed" else False, "")
            for (n, _), p in zip(parts, points, strict=True)
        ]
        return ExerciseResult(function, check.check_name, status, 0.0, max_score, scored, message)

    if info is None:
        return failed("failed", stop[1] if stop else "Not graded: the grader never got to it.")
    if info.get("status") == "missing":
        similar = info.get("similar") or []
        hint = f" Did you rename it to {', '.join(similar)}?" if similar else ""
        return failed(
            "missing",
            f"No function named '{function}' in your notebook.{hint} The grader looks for the "
            "name the notebook gave; keep it, and make sure its cell has no syntax error.",
        )
    if info.get("status") == "not callable":
        return failed(
            "missing",
            f"'{function}' is {info.get('detail', 'not a function')} in your notebook, not a "
            "function. Do not assign to the exercise's name.",
        )

    results: list[tuple[int, CheckResult]] = []
    for j, variant in enumerate(variants):
        crashed = stop is not None and stop[0] == j
        if j not in recordings and not crashed:
            continue
        reason = stop[1] if crashed else ""
        results.append((j, replay(check, variant, recordings.get(j, {}), reason)))
        if crashed:
            break
    if not results:
        return failed("failed", stop[1] if stop else "Not graded: nothing was recorded.")
    if not results[0][1].attempted:
        result = failed("not attempted", "Not attempted: it still raises NotImplementedError.")
        return result

    scored: list[PartScore] = []
    aligned = (
        all(len(_real_parts(r)) == len(parts) for _, r in results)
        and len(parts) > 0
        and any(p.name for p in results[0][1].parts)
    )
    if aligned:
        for k, ((name, _), p) in enumerate(zip(parts, points, strict=True)):
            passed, message = True, ""
            for j, result in results:
                part = _real_parts(result)[k]
                if not part.passed:
                    passed, message = False, _where(j) + (part.message or "")
                    break
            scored.append(PartScore(name, p, passed, _advise(message, notes)))
    else:  # no parts, or parts that differ between variants: the whole check is one part
        passed, message = True, ""
        for j, result in results:
            if not result.passed:
                passed, message = False, _where(j) + " ".join(result.messages)
                break
        name = parts[0][0] if len(parts) == 1 else ""
        scored = [PartScore(name, max_score, passed, _advise(message, notes))]
    score = sum(p.score for p in scored)
    first = next((p.message for p in scored if not p.passed), "")
    status = "passed" if all(p.passed for p in scored) else "failed"
    return ExerciseResult(function, check.check_name, status, score, max_score, scored, first)


def _real_parts(result: CheckResult) -> list:
    return [p for p in result.parts if p.name or p.points]


def _where(j: int) -> str:
    if j == 0:
        return ""
    return f"On hidden test {j} (other inputs than the notebook's): "


def _advise(message: str, notes: dict[str, str] | None) -> str:
    for needle, advice in (notes or {}).items():
        if needle in message:
            return f"{message}\n{advice}"
    return message
