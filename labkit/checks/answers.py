"""Where a check's expected values come from.

A check never computes an exercise's answer itself: it asks ``t.expected(name, *inputs)``
for the value that exercise ``name``'s reference gives on those inputs, and
``t.mistakes(name, *inputs)`` for the values of the plausible mistakes (each with the hint that
names it). Who answers depends on where the check runs:

* **in your notebook**, :class:`RecordedAnswers` reads the values that ``labkit build``
  recorded from the solution notebook for the notebook's own problems (``expected/labNN.st``
  next to this module: tensors and numbers, never code);
* **in the instructor's grader**, the references themselves compute them, on hidden problems
  too (``labkit.grading.answers``, which is not part of the student release).

Each request is named by an :class:`Request`: the exercise, the part of the check, the
reference's name and how many times the part asked for it before. A check asks in the same
order whatever the student's function returns, so the keys match the recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol

from labkit.checks.results import CheckFailed


@dataclass(frozen=True)
class Request:
    exercise: str  # the function's name in the notebook, e.g. "saliency"
    part: int  # 0 outside any part, then 1, 2, ... in the order the check opens them
    name: str  # the reference asked for (an exercise's name, or "mistakes:" + one)
    count: int  # 0 for the part's first request of this name, then 1, 2, ...

    def __str__(self) -> str:
        return f"{self.exercise}|{self.part}|{self.name}#{self.count}"


class Answers(Protocol):
    """Gives a check its expected values and its mistakes' values."""

    def expected(self, key: Request, name: str, args: tuple, kwargs: dict) -> Any: ...

    def mistakes(
        self, key: Request, name: str, args: tuple, kwargs: dict
    ) -> list[tuple[Any, str]]: ...


class MissingAnswer(RuntimeError):
    """A recorded value that is not there: the check and the recording disagree."""


RECORDING_SUFFIX = ".st"


def recording_name(lab: str) -> str:
    return f"lab{lab}{RECORDING_SUFFIX}"


@cache
def _load_recording(lab: str) -> dict[str, Any]:
    from labkit import plaindata

    path = resources.files("labkit.checks").joinpath("expected", recording_name(lab))
    try:
        data = path.read_bytes()
    except (FileNotFoundError, OSError):
        return {}
    limits = plaindata.Limits(max_bytes=1 << 30, max_items=10_000_000, max_elements=50_000_000)
    value = plaindata.decode(data, limits)
    return value if isinstance(value, dict) else {}


class RecordedAnswers:
    """The answers ``labkit build`` recorded for the notebook's own problems (variant 0)."""

    def __init__(self, lab: str, table: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self._table = table

    @property
    def table(self) -> dict[str, Any]:
        if self._table is None:
            self._table = _load_recording(self.lab)
        return self._table

    def _get(self, key: Request) -> Any:
        try:
            return self.table[str(key)]
        except KeyError:
            raise MissingAnswer(
                f"labkit has no recorded answer for {key} (lab {self.lab}). The labkit you have "
                "installed and this notebook are probably from different releases: reinstall "
                "labkit with the command in the notebook's first cell."
            ) from None

    def expected(self, key: Request, name: str, args: tuple, kwargs: dict) -> Any:
        return self._get(key)

    def mistakes(self, key: Request, name: str, args: tuple, kwargs: dict) -> list:
        found = self._get(key)
        return [tuple(pair) for pair in found] if isinstance(found, list) else []


class NoAnswers:
    """For hidden variants outside the grader: there is nothing recorded for them."""

    def _refuse(self, *args: Any) -> Any:
        raise CheckFailed(
            "Hidden variants are only checked by the instructor's grader; in the notebook, "
            "run the check on its own problems."
        )

    expected = mistakes = _refuse
