"""Checks -> scores, in the grader's own process (which never runs student code).

Each check runs here, on the notebook's problems (variant 0) and on the hidden variants, with
a :class:`~labkit.grading.remote.RemoteRunner` sending each call of the student's function to
the submission's worker, and :class:`~labkit.grading.answers.ComputedAnswers` giving the
expected values. A sub-test (a part of the check) earns its points only if it passes on every
variant.

Checks seed torch's global random generator, so one check runs at a time in this process
(:data:`CHECK_LOCK`); a thread lets go of the lock while its worker computes, and gets its own
random state back when it takes the lock again, so slots grade in parallel and each check sees
exactly the random numbers it would see alone.
"""

from __future__ import annotations

import difflib
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from labkit.checks.core import Check, run_check
from labkit.checks.results import CheckFailed, CheckResult
from labkit.grading.points import part_points

CHECK_LOCK = threading.Lock()
_STRUCTURES: dict[str, list[tuple[str, float]]] = {}


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


@contextmanager
def released(lock: threading.Lock = CHECK_LOCK):
    """Let other slots run checks while this thread waits (for its worker), then take the
    lock back with this thread's random state as it was."""
    state = torch.get_rng_state()
    lock.release()
    try:
        yield
    finally:
        lock.acquire()
        torch.set_rng_state(state)


class _NotRun:
    def call(self, t, fn, args, kwargs):
        raise CheckFailed("not run")


def structure(check: Check, answers: Any) -> list[tuple[str, float]]:
    """The check's parts (name, default points), as the reference's run on the notebook's
    problem shows them (the reference is the instructor's code: it runs here)."""
    key = f"{check.lab.number}:{check.name}"
    if key not in _STRUCTURES:
        reference = getattr(getattr(answers, "sol", None), check.name, None)
        if callable(reference):
            result = run_check(check, reference, answers=answers)
        else:  # no reference here: the parts a run that reaches no call shows
            result = run_check(check, _NotRun().call, runner=_NotRun(), answers=answers)
        parts = [(p.name, p.points) for p in result.parts if p.name or p.points]
        _STRUCTURES[key] = parts or [("", float(check.points))]
    return _STRUCTURES[key]


def failed_exercise(
    check: Check, parts: list[tuple[str, float]], table: dict, status: str, message: str
) -> ExerciseResult:
    points = part_points(table, check.name, parts)
    scored = [
        PartScore(n, p, None if status != "failed" else False, "")
        for (n, _), p in zip(parts, points, strict=True)
    ]
    return ExerciseResult(check.name, check.check_name, status, 0.0, sum(points), scored, message)


def missing_exercise(
    check: Check, parts: list[tuple[str, float]], table: dict, defined: list[str], detail: str = ""
) -> ExerciseResult:
    if detail:
        message = (
            f"'{check.name}' is {detail} in your notebook, not a function. Do not assign to "
            "the exercise's name."
        )
    else:
        similar = difflib.get_close_matches(check.name, defined, n=3, cutoff=0.6)
        hint = f" Did you rename it to {', '.join(similar)}?" if similar else ""
        message = (
            f"No function named '{check.name}' in your notebook.{hint} The grader looks for "
            "the name the notebook gave; keep it, and make sure its cell runs."
        )
    return failed_exercise(check, parts, table, "missing", message)


def score_exercise(
    check: Check,
    parts: list[tuple[str, float]],
    results: list[tuple[int, CheckResult]],
    table: dict,
    notes: dict[str, str] | None = None,
) -> ExerciseResult:
    """Score one exercise from its check's results on each variant ((index, result) pairs;
    index 0 is the notebook's problem)."""
    points = part_points(table, check.name, parts)
    max_score = sum(points)
    if not results:
        return failed_exercise(check, parts, table, "failed", "Not graded: nothing ran.")
    if not results[0][1].attempted:
        return failed_exercise(
            check,
            parts,
            table,
            "not attempted",
            "Not attempted: it still raises NotImplementedError.",
        )
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
    return ExerciseResult(check.name, check.check_name, status, score, max_score, scored, first)


def run_variants(
    check: Check,
    function: Any,
    variants: list[int],
    runner: Any,
    answers: Any,
    timeout: float,
    deadline: float,
) -> list[tuple[int, CheckResult]]:
    """The check on each variant (under :data:`CHECK_LOCK`), stopping at the first variant
    whose calls did not come back, or at ``deadline`` (time.monotonic())."""
    results = []
    for j, variant in enumerate(variants):
        with CHECK_LOCK:
            result = run_check(
                check, function, variant=variant, runner=runner, answers=answers, timeout=timeout
            )
        results.append((j, result))
        if not result.attempted or getattr(runner, "ended", "") or time.monotonic() > deadline:
            break
    return results


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
