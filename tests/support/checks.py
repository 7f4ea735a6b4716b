"""The one way to test a lab's checks: a table of correct and wrong implementations.

Each lab's test module lists :class:`Correct` and :class:`Wrong` entries and hands the table to
:class:`LabHarness`. Every entry is run twice, the two ways a check runs:

* as the student sees it: the notebook's problems, the recorded answers (``labkit build``);
* as the grader runs it: hidden variants, with the references computing every answer.

A correct implementation must pass both; a wrong one must fail both (on the notebook's problems
unless it is marked ``where="hidden"``, for answers that recognise the notebook's inputs) with a
message that contains its ``hint`` words: the hint must name the mistake, so it is never empty.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from labkit.checks.core import Check, run_check
from labkit.checks.results import CheckResult
from labkit.grading.answers import ComputedAnswers, load_answer_key
from labkit.grading.config import hidden_variants
from labkit.notebooks import notebook_definitions

ROOT = Path(__file__).resolve().parents[2]
TEST_SEED = "tests"  # hidden variants of the tests; the grader draws its own from its seed


@dataclass(frozen=True)
class Correct:
    exercise: str
    fn: Callable
    note: str = ""  # what makes it a different correct answer (a loop, float64, nnsight...)

    @property
    def id(self) -> str:
        return f"{self.exercise}-ok-{self.fn.__name__}"


@dataclass(frozen=True)
class Wrong:
    exercise: str
    fn: Callable
    hint: str  # words the failure message must contain (case-insensitive)
    where: str = "both"  # "both", or "hidden" for answers that recognise the notebook's inputs
    new: bool = False  # a kind of mistake no issue named (caching, portability, sizes past 9...)

    def __post_init__(self) -> None:
        if not self.hint.strip():
            raise ValueError(f"{self.fn.__name__}: a wrong answer needs the words its hint names")

    @property
    def id(self) -> str:
        return f"{self.exercise}-wrong-{self.fn.__name__}"


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code.")


class LabHarness:
    """Runs a lab's checks the student's way and the grader's way."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.module = importlib.import_module(f"labkit.checks.lab{lab}")

    @cached_property
    def solution(self) -> dict:
        path = next((ROOT / "solutions").glob(f"{self.lab}_*.ipynb"))
        return notebook_definitions(path, module_name=f"solution:{self.lab}")

    @cached_property
    def answers(self) -> ComputedAnswers:
        return ComputedAnswers(load_answer_key(self.lab), self.solution)

    @property
    def exercises(self) -> dict[str, Check]:
        return self.module.LAB.exercises

    def check(self, exercise: str) -> Check:
        return self.exercises[exercise]

    def notebook(self, exercise: str, fn: Callable) -> CheckResult:
        """The notebook's own check, with the answers ``labkit build`` recorded."""
        return run_check(self.check(exercise), fn)

    def hidden(self, exercise: str, fn: Callable, variant: int) -> CheckResult:
        """A hidden variant, as the grader runs it (the references compute the answers)."""
        return run_check(self.check(exercise), fn, variant=variant, answers=self.answers)

    def variants(self, count: int, seed: str = TEST_SEED) -> list[int]:
        return hidden_variants(seed, self.lab, count)

    # -- assertions ------------------------------------------------------------------------------
    def assert_passes(self, case: Correct, variants: list[int]) -> None:
        result = self.notebook(case.exercise, case.fn)
        assert result.passed, f"{case.id} in the notebook:\n{result.report()}"
        for variant in variants:
            result = self.hidden(case.exercise, case.fn, variant)
            assert result.passed, f"{case.id} on hidden variant {variant}:\n{result.report()}"

    def assert_fails(self, case: Wrong, variants: list[int]) -> None:
        runs = (
            []
            if case.where == "hidden"
            else [("the notebook", self.notebook(case.exercise, case.fn))]
        )
        runs += [(f"hidden variant {v}", self.hidden(case.exercise, case.fn, v)) for v in variants]
        if case.where == "hidden":
            assert any(not r.passed for _, r in runs), f"{case.id} passed every hidden variant"
            runs = [(w, r) for w, r in runs if not r.passed][:1]
        for where, result in runs:
            text = result.report()
            assert result.attempted, f"{case.id} on {where} was not attempted:\n{text}"
            assert not result.passed, f"{case.id} passed on {where}"
            assert "check itself stopped" not in text and "no recorded answer" not in text, text
            assert case.hint.lower() in text.lower(), (
                f"{case.id} on {where}: the message does not name the mistake "
                f"({case.hint!r}):\n{text}"
            )


def table_counts(cases: list, exercises: list[str]) -> dict[str, tuple[int, int, int]]:
    """exercise -> (correct alternatives, wrong ones, wrong ones of new kinds)."""
    counts = {}
    for name in exercises:
        correct = sum(isinstance(c, Correct) and c.exercise == name for c in cases)
        wrong = [c for c in cases if isinstance(c, Wrong) and c.exercise == name]
        counts[name] = (correct, len(wrong), sum(c.new for c in wrong))
    return counts


# ----- checks written inside tests ----------------------------------------------------------------
def one_exercise(title: str, points: float = 1.0, timeout: float | None = 10.0):
    """Register a check written in a test as the only exercise of its own lab (the registry
    refuses an exercise registered twice, and tests define checks over and over)."""
    import re
    import zlib

    from labkit.checks.core import Lab

    def register(body):
        lab = Lab("00", "00_test.ipynb")
        given = re.match(r"^Exercise (0\.\d+): (.*)$", title)
        name = given.group(2) if given else title
        number = given.group(1) if given else f"0.{zlib.crc32(name.encode()) % 1000 + 100}"
        return lab.exercise(number, name, points=points, timeout=timeout)(body)

    return register
