"""Computed claims: every sentence of a lab that states a number, a sign, an ordering or "A beats
B" is checked against the result it speaks of, right below that result.

    claim("occlusion beats the random orders on both curves", occ < rnd and occ_ins > rnd_ins,
          f"deletion AUC {occ:.2f} vs {rnd:.2f}", needs=checks.check_deletion_curve)

prints ``✓ occlusion beats the random orders on both curves (deletion AUC 0.41 vs 0.55)``.

* In the solution notebooks (``LABKIT_STRICT_CLAIMS=1``, as the tests run them) a claim that does
  not hold stops the notebook: prose that drifted from its numbers fails CI.
* In a student's lab the same claim runs on the student's own results. One that does not hold
  says so politely, names the exercise it depends on, and the notebook goes on; it never shows
  an answer. A claim whose inputs need an unfinished exercise prints one line and goes on.

:func:`interval` gives the spread of a mean over a handful of prompts (a bootstrap), so that
claims about averages can compare with the uncertainty in mind.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ClaimFailed", "claim", "interval", "strict"]

STRICT_VARIABLE = "LABKIT_STRICT_CLAIMS"


class ClaimFailed(AssertionError):
    """A claim of a solution notebook that its own numbers no longer support."""


def strict() -> bool:
    """Whether a claim that does not hold stops the notebook (solutions under test)."""
    return os.environ.get(STRICT_VARIABLE, "") not in ("", "0", "false")


@dataclass
class ClaimResult:
    text: str
    holds: bool | None  # None: skipped (an exercise it needs is not done)
    shown: str = ""

    def __repr__(self) -> str:
        verdict = "skipped" if self.holds is None else "holds" if self.holds else "fails"
        return f"<claim {verdict}: {self.text}>"


def _numbers_of(needs: Any) -> str:
    checks = needs if isinstance(needs, (list, tuple)) else [needs] if needs else []
    numbers = []
    for check in checks:
        number = getattr(check, "number", None)
        numbers.append(f"exercise {number}" if number else str(check))
    return " and ".join(numbers)


def claim(
    text: str,
    holds: bool | Callable[[], bool],
    shown: str | Callable[[], str] = "",
    *,
    needs: Any = None,
) -> ClaimResult:
    """Check one sentence against the numbers it states, and print the verdict.

    ``holds`` is the condition (or a function that computes it); ``shown`` the values that
    back it, printed in brackets; ``needs`` the check (or checks) of the exercises whose output
    the claim reads, to name them when the claim does not hold.
    """
    try:
        verdict = bool(holds() if callable(holds) else holds)
        values = shown() if callable(shown) else shown
    except NotImplementedError:
        which = _numbers_of(needs) or "an exercise above"
        print(f"(skipped) {text}: finish {which} first.")
        return ClaimResult(text, None)
    tail = f" ({values})" if values else ""
    if verdict:
        print(f"✓ {text}{tail}")
        return ClaimResult(text, True, values)
    if strict():
        raise ClaimFailed(f"✗ {text}{tail}: the prose no longer matches the numbers.")
    which = _numbers_of(needs)
    advice = (
        f" If {which} passed its check, this is a real difference worth a look."
        if which
        else " Your results differ from the ones the text was written for."
    )
    print(f"✗ With your results this comes out the other way: {text}{tail}.{advice}")
    return ClaimResult(text, False, values)


def interval(
    values: Sequence[float], level: float = 0.9, draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``values`` and a bootstrap interval around it: (mean, low, high).

    With a handful of prompts the interval is wide: that is the point of showing it.
    """
    data = [float(v) for v in values]
    if not data:
        raise ValueError("interval() needs at least one value.")
    mean = sum(data) / len(data)
    if len(data) == 1:
        return mean, mean, mean
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(data) for _ in data) / len(data) for _ in range(draws))
    cut = (1 - level) / 2
    return mean, means[int(cut * draws)], means[min(draws - 1, int((1 - cut) * draws))]
