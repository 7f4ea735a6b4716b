"""Lab 01's table of exercises, and the one way its checks compare a series of calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from labkit.checks.core import Checker, Lab

LAB = Lab("01", "01_attribution.ipynb")

EARLIER = (
    "That is the answer for an earlier input of this check. Does your function keep something "
    "between calls: a cache or a memo (keyed on sizes, on the model or on the function), a "
    "global, or a tensor it reuses?"
)
PILED = (
    "Twice the right answer, on an input seen before: gradients piled up from an earlier call "
    "(.backward() on a tensor you keep, and its .grad never cleared). Differentiate a fresh "
    "leaf copy each time, with torch.autograd.grad."
)


@dataclass
class Call:
    """One call of the student's function: its inputs and what the message calls it."""

    args: tuple
    what: str
    kwargs: dict = field(default_factory=dict)
    repeat: bool = False  # the same inputs as an earlier call
    more: Sequence[tuple[Any, str]] = ()  # mistakes of this call only: (wrong value, hint)


def earlier_answers(t: Checker) -> list[Any]:
    """The answers this check expected so far, in every part: an answer that repeats one of
    them where another was expected comes from state kept between calls."""
    return t.__dict__.setdefault("_lab01_earlier", [])


def magnitude(value: Any) -> float:
    """The typical size of an answer: absolute tolerances are multiplied by it."""
    return max(float(torch.as_tensor(value).detach().double().abs().max()), 1e-3)


def compare_calls(
    t: Checker,
    fn,
    name: str,
    calls: Sequence[Call],
    *,
    hint: str,
    scalar: bool = False,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    on_integer: str = "",
) -> list[torch.Tensor]:
    """Call ``fn`` on each of ``calls`` in turn and compare with the reference ``name``; a
    wrong answer is named by the answer key's mistakes, by ``call.more``, or as an earlier
    call's answer (state kept between calls). ``on_integer`` is the hint for an integer tensor
    where floats are expected. Returns what ``fn`` returned, as tensors."""
    earlier = earlier_answers(t)
    out = []
    for call in calls:
        want = t.expected(name, *call.args, **call.kwargs)
        named = t.mistakes(name, *call.args, **call.kwargs) + call.more
        got = t.call(fn, *call.args, **call.kwargs)
        if scalar:
            got = t.scalar(got, call.what)
        elif on_integer and isinstance(got, torch.Tensor) and not got.is_floating_point():
            t.fail(call.what, f"Expected floats, got an integer tensor ({got.dtype}).", on_integer)
        if call.repeat and not scalar:
            named = named + [(2 * torch.as_tensor(want), PILED)]
        named = named + [(w, EARLIER) for w in list(earlier)]
        scale = magnitude(want)
        out.append(
            t.close(
                got, want, call.what, atol=atol, rtol=rtol, scale=scale, hint=hint, mistakes=named
            )
        )
        earlier.append(want)
    return out
