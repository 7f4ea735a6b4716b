"""The machinery behind every lab's checks: results, friendly failures, "not attempted".

A check is a function decorated with :func:`check`. It receives the student's function and a
:class:`Checker`; it calls the student's code through ``t.call`` and compares with ``t.close``,
``t.true`` and friends. The decorator turns what happened into a :class:`CheckResult`:

* everything held        -> passed, one line printed, full score;
* ``NotImplementedError`` -> "not attempted", the notebook runs on;
* a failed comparison     -> what was tested, expected vs got, and a hint;
* the student's code raised something else -> the error, in one line, and a hint.

Checks compare *behaviour* (seeded inputs with tolerances, invariants of the method), never
source code, and never print a reference implementation.
"""

from __future__ import annotations

import functools
import math
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

GREEN, RED, YELLOW, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[0m"


@dataclass
class CheckResult:
    """What one check found. The instructor's grader reuses these fields."""

    name: str
    passed: bool
    score: float
    max_score: float
    messages: list[str] = field(default_factory=list)
    attempted: bool = True

    @property
    def status(self) -> str:
        if not self.attempted:
            return "not attempted"
        return "passed" if self.passed else "failed"

    def __repr__(self) -> str:
        return f"<CheckResult {self.name}: {self.status}, {self.score:g}/{self.max_score:g}>"

    def report(self) -> str:
        """The text shown in the notebook."""
        if not self.attempted:
            return f"{YELLOW}[not attempted]{RESET} {self.name}: " + " ".join(self.messages)
        if self.passed:
            return f"{GREEN}[passed]{RESET} {self.name} ({self.score:g}/{self.max_score:g})"
        body = "\n".join("    " + line for m in self.messages for line in m.splitlines())
        return f"{RED}[failed]{RESET} {self.name} ({self.score:g}/{self.max_score:g})\n{body}"


class CheckFailed(AssertionError):
    """Raised by a comparison that did not hold; its message is shown to the student."""


class NotAttempted(Exception):
    """The student's function still raises NotImplementedError."""


def _student_frame(err: BaseException) -> str:
    """Where in the student's code the error came from: 'line N in fn_name'."""
    frames = traceback.extract_tb(err.__traceback__)
    notebook = [f for f in frames if "labkit" not in f.filename and "torch" not in f.filename]
    frame = (notebook or frames)[-1]
    return f"line {frame.lineno} in {frame.name}"


class Checker:
    """Comparisons with feedback a student can act on. Each one raises :class:`CheckFailed`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call the student's function; turn its errors into feedback instead of a traceback."""
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as err:
            raise NotAttempted(str(err)) from None
        except CheckFailed:
            raise
        except Exception as err:  # the student's bug, reported in one line
            raise CheckFailed(
                f"Your function raised {type(err).__name__}: {err} ({_student_frame(err)}).\n"
                "Hint: run it on its own in a cell to see the full traceback."
            ) from None

    def true(self, condition: bool, what: str, hint: str = "") -> None:
        if not condition:
            raise CheckFailed(f"Tested: {what}." + (f"\nHint: {hint}" if hint else ""))

    def tensor(
        self,
        got: Any,
        what: str,
        shape: tuple[int, ...] | None = None,
        hint: str = "",
    ) -> torch.Tensor:
        """``got`` must be a finite float tensor (of ``shape``, if given); returns it detached."""
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(
                f"Tested: {what}.\nExpected a torch.Tensor, got {type(got).__name__}."
                + (f"\nHint: {hint}" if hint else "")
            )
        if shape is not None and tuple(got.shape) != tuple(shape):
            raise CheckFailed(
                f"Tested: {what}.\nExpected shape {tuple(shape)}, got {tuple(got.shape)}."
                + (f"\nHint: {hint}" if hint else "")
            )
        if not got.is_floating_point():
            raise CheckFailed(f"Tested: {what}.\nExpected a float tensor, got dtype {got.dtype}.")
        if not torch.isfinite(got).all():
            raise CheckFailed(
                f"Tested: {what}.\nYour result contains NaN or inf."
                + (f"\nHint: {hint}" if hint else "")
            )
        return got.detach().cpu()

    def close(
        self,
        got: Any,
        expected: torch.Tensor | float,
        what: str,
        *,
        atol: float = 1e-4,
        rtol: float = 1e-3,
        hint: str = "",
    ) -> None:
        """``got`` matches ``expected`` within ``atol + rtol * |expected|``, element-wise."""
        expected_t = torch.as_tensor(expected, dtype=torch.float32).detach().cpu()
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            got = torch.tensor(float(got))
        got_t = self.tensor(got, what, shape=tuple(expected_t.shape), hint=hint).float()
        ok = torch.isclose(got_t, expected_t, atol=atol, rtol=rtol)
        if ok.all():
            return
        bad = (~ok).nonzero()[0].tolist()
        where = f" at index {tuple(bad)}" if bad else ""
        n_bad = int((~ok).sum())
        raise CheckFailed(
            f"Tested: {what}.\n"
            f"First mismatch{where}: expected {expected_t[tuple(bad)].item():.6g}, "
            f"got {got_t[tuple(bad)].item():.6g} ({n_bad} of {ok.numel()} entries differ; "
            f"tolerance atol={atol:g}, rtol={rtol:g})." + (f"\nHint: {hint}" if hint else "")
        )

    def scalar(self, got: Any, what: str) -> float:
        """``got`` must be a real number (a Python float or a one-element tensor)."""
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool) or not math.isfinite(got):
            raise CheckFailed(f"Tested: {what}.\nExpected a finite number, got {got!r}.")
        return float(got)


def check(name: str, points: float = 1.0) -> Callable:
    """Make ``fn(student_fn, t, ...)`` a check: ``check_x(student_fn) -> CheckResult``.

    The result is printed (one line on success) and returned for the grader. ``quiet=True``
    returns it without printing.
    """

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(student_fn: Callable, *args: Any, quiet: bool = False, **kwargs: Any):
            result = run_check(body, name, points, student_fn, *args, **kwargs)
            if not quiet:
                print(result.report())
            return result

        run.check_name = name
        run.points = points
        return run

    return decorate


def run_check(
    body: Callable, name: str, points: float, student_fn: Callable, *args: Any, **kwargs: Any
) -> CheckResult:
    """Run a check body and convert its outcome into a :class:`CheckResult` (never raises)."""
    if not callable(student_fn):
        return CheckResult(
            name, False, 0.0, points, [f"Pass your function itself, not {student_fn!r}."]
        )
    t = Checker(name)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            body(student_fn, t, *args, **kwargs)
    except NotAttempted:
        return CheckResult(
            name,
            False,
            0.0,
            points,
            ["still raises NotImplementedError; fill in the exercise, then run this cell again."],
            attempted=False,
        )
    except CheckFailed as err:
        return CheckResult(name, False, 0.0, points, [str(err)])
    return CheckResult(name, True, points, points, [])


@contextmanager
def skip_if_unattempted(what: str = "this cell") -> Iterator[None]:
    """Run a cell that uses an exercise; if the exercise is not done yet, say so and go on."""
    try:
        yield
    except NotImplementedError:
        print(f"{YELLOW}(skipped){RESET} {what} needs an exercise you have not done yet.")
