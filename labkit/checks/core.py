"""The machinery behind every lab's checks: the :class:`Checker`, the :func:`check` decorator,
and the helpers for cells that use exercises.

A check is a function decorated with :func:`check`. It receives the student's function and a
:class:`Checker` ``t``; it calls the student's code only through ``t.call`` and compares with
``t.close``, ``t.true`` and friends. The decorator turns what happened into a
:class:`~labkit.checks.results.CheckResult`:

* everything held         -> passed, one line shown, full score;
* ``NotImplementedError`` -> "not attempted", the notebook runs on;
* a failed comparison      -> what was tested, expected vs got, and a hint that names the
  mistake when the answer matches a known one;
* the student's code raised, ran too long, changed its inputs, left hooks on a model, or
  switched gradients off for good -> what happened, in one line, and what to do.

A check never raises: whatever happens comes back as a ``CheckResult``.

**Parts.** A check is split into independent parts (``with t.part("name"): ...``), each worth
some points, so a half-right function gets partial credit and every part's outcome is known.
Build each part's problem and expected answer *before* calling the student's code.

**Variants.** In a notebook every check uses fixed problems (``t.variant == 0``). The
instructor's grader runs the same checks on hidden variants: other seeds, shapes and model
families, picked with ``t.seed(...)`` and ``t.choice(...)``.

**Where the student's code runs** is up to a runner (``labkit.checks.transport``): here in a
notebook; in a sandboxed process, recorded, and replayed into the grader's own process when
grading.

Checks compare *behaviour* (seeded inputs with tolerances, invariants of the method), never
source code, and never show a reference implementation.
"""

from __future__ import annotations

import functools
import math
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from labkit.checks.guards import WatchedModel, describe, guarded_call, is_library
from labkit.checks.results import (
    CheckFailed,
    CheckResult,
    NotAttempted,
    PartResult,
    StopChecking,
    TimedOut,
)
from labkit.checks.transport import LiveRunner, Recorder, Replayer

__all__ = [
    "CheckFailed",
    "CheckResult",
    "Checker",
    "NotAttempted",
    "PartResult",
    "Recorder",
    "Replayer",
    "Results",
    "check",
    "run_check",
    "skip_if_unattempted",
]

DEFAULT_TIMEOUT = 10.0  # seconds per call of the student's function


# ----- the checker -------------------------------------------------------------------------------
class Checker:
    """Calls the student's code and compares; each comparison raises :class:`CheckFailed`.

    ``variant`` 0 is the notebook's fixed problems; the grader passes hidden variants.
    """

    def __init__(
        self,
        name: str,
        *,
        variant: int = 0,
        runner: LiveRunner | Replayer | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.name = name
        self.variant = variant
        self.runner = runner or LiveRunner()
        self.timeout = timeout
        self.parts: list[PartResult] = []
        self._part_index = 0  # 0: outside any part
        self._call_index = 0
        self._stopped: str | None = None  # why the remaining parts are not run
        self._watched: list[WatchedModel] = []
        self._rng = random.Random(variant)
        self.slowest_call = 0.0

    # -- hidden variants ----------------------------------------------------------------------
    def seed(self, offset: int = 0) -> int:
        """A seed for a test problem: ``offset`` in the notebook, a hidden one when grading."""
        if self.variant == 0:
            return offset
        return (self.variant * 1_000_003 + offset * 7_919) % (2**31 - 1)

    def choice(self, options: Sequence[Any]) -> Any:
        """The first option in the notebook; a hidden pick when grading."""
        return options[0] if self.variant == 0 else self._rng.choice(list(options))

    # -- parts --------------------------------------------------------------------------------
    @contextmanager
    def part(self, name: str, points: float = 1.0) -> Iterator[None]:
        """An independent part of the check: a failure inside it costs only its points."""
        self._part_index += 1
        self._call_index = 0
        result = PartResult(name, points, None)
        self.parts.append(result)
        skipped = self._stopped  # after a timeout, the part stops at its first call
        try:
            yield
        except StopChecking as err:
            result.passed = None if skipped else False
            result.message = skipped or str(err)
            self._stopped = self._stopped or "Not run: an earlier call took too long."
        except CheckFailed as err:
            result.passed, result.message = False, str(err)
        else:
            result.passed = True

    def _call_key(self) -> str:
        return f"{self._part_index}/{self._call_index}"

    # -- calling the student's code -----------------------------------------------------------
    def watch(self, module: Any, name: str = "the model") -> Any:
        """Verify after every call that ``module`` (a LabModel or nn.Module) kept its weights,
        hooks and frozen parameters; repair it and fail if not. Returns ``module``."""
        net = getattr(module, "model", module)
        if isinstance(net, torch.nn.Module) and not any(w.module is net for w in self._watched):
            self._watched.append(WatchedModel(net, name))
        return module

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call the student's function (or one it returned) with copies of the inputs.

        Fails if it raises, takes longer than the time limit, changes its inputs or a watched
        model, or leaves gradients switched off. Returns what it returned.
        """
        if self._stopped:
            raise StopChecking(self._stopped)
        self._call_index += 1
        return self.runner.call(self, fn, args, kwargs)

    def _call_here(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Run the student's code in this process, under the guards (see ``guarded_call``)."""
        started = time.perf_counter()
        try:
            return guarded_call(fn, args, kwargs, timeout=self.timeout, watched=self._watched)
        except StopChecking:
            self._stopped = "Not run: an earlier call took too long."
            raise
        finally:
            self.slowest_call = max(self.slowest_call, time.perf_counter() - started)

    # -- comparisons --------------------------------------------------------------------------
    def true(self, condition: bool, what: str, hint: str = "") -> None:
        if not condition:
            raise CheckFailed(f"Tested: {what}." + (f"\nHint: {hint}" if hint else ""))

    def fail(self, what: str, detail: str, hint: str = "") -> None:
        raise CheckFailed(f"Tested: {what}.\n{detail}" + (f"\nHint: {hint}" if hint else ""))

    def tensor(
        self,
        got: Any,
        what: str,
        shape: tuple[int, ...] | None = None,
        hint: str = "",
    ) -> torch.Tensor:
        """``got`` must be a finite real tensor (of ``shape``, if given); returns it detached,
        on the CPU. Numpy arrays are accepted and converted."""
        tail = f"\nHint: {hint}" if hint else ""
        got = _from_numpy(got)
        if type(got) is not torch.Tensor:
            extra = ""
            if isinstance(got, torch.Tensor):
                extra = " Return a plain torch.Tensor, not a subclass."
            elif isinstance(got, (int, float)):
                extra = " Return a tensor, e.g. torch.tensor(value)."
            raise CheckFailed(
                f"Tested: {what}.\nExpected a torch.Tensor, got {describe(got)}.{extra}{tail}"
            )
        if got.is_meta or got.layout != torch.strided:
            raise CheckFailed(
                f"Tested: {what}.\nExpected a tensor with values, got {describe(got)} "
                f"({'meta device' if got.is_meta else got.layout}).{tail}"
            )
        if shape is not None and tuple(got.shape) != tuple(shape):
            raise CheckFailed(
                f"Tested: {what}.\nExpected shape {tuple(shape)}, got {tuple(got.shape)}.{tail}"
            )
        if got.is_complex() or not got.is_floating_point():
            raise CheckFailed(
                f"Tested: {what}.\nExpected a real float tensor, got dtype {got.dtype}."
                + (" Convert with .float()." if not got.is_complex() else "")
            )
        if got.dtype in (torch.float16, torch.bfloat16):
            raise CheckFailed(
                f"Tested: {what}.\nYour result has dtype {got.dtype}, which is too coarse to "
                "compare (about 3 significant digits). Compute in float32 (the model's dtype)."
            )
        got = got.detach().cpu()
        if not torch.isfinite(got).all():
            raise CheckFailed(f"Tested: {what}.\nYour result contains NaN or inf.{tail}")
        return got

    def close(
        self,
        got: Any,
        expected: torch.Tensor | float,
        what: str,
        *,
        atol: float = 1e-4,
        rtol: float = 1e-3,
        scale: float | None = None,
        hint: str = "",
        mistakes: Sequence[tuple[Any, str]] = (),
    ) -> torch.Tensor:
        """``got`` matches ``expected`` within ``atol + rtol * |expected|``, element-wise.

        ``scale`` multiplies ``atol`` (pass the typical size of the values, so that the
        tolerance follows their magnitude). ``mistakes`` lists ``(wrong answer, hint)`` pairs:
        when ``got`` matches a wrong answer, its hint names the mistake; ``hint`` is shown when
        no listed mistake matches. Returns ``got`` as a tensor.
        """
        expected_t = torch.as_tensor(expected).detach().cpu().double()
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            got = torch.tensor(float(got))
        got = _from_numpy(got)
        if isinstance(got, torch.Tensor) and type(got) is torch.Tensor and got.dim() == 0:
            got = got.reshape(expected_t.shape) if expected_t.numel() == 1 else got
        got_t = self.tensor(got, what, shape=tuple(expected_t.shape), hint=hint).double()
        atol = atol * (scale if scale is not None else 1.0)
        ok = torch.isclose(got_t, expected_t, atol=atol, rtol=rtol)
        if ok.all():
            return got_t
        bad = tuple((~ok).nonzero()[0].tolist())
        where = f" at index {bad}" if bad else ""
        n_bad = int((~ok).sum())
        named = _matching_mistake(got_t, mistakes, atol, rtol)
        tail = f"\nHint: {named}" if named else (f"\nHint: {hint}" if hint else "")
        raise CheckFailed(
            f"Tested: {what}.\n"
            f"First mismatch{where}: expected {_num(expected_t[bad])}, got {_num(got_t[bad])} "
            f"({n_bad} of {ok.numel()} entries differ; tolerance {atol:.2g} + {rtol:.2g} x "
            f"|expected|).{tail}"
        )

    def scalar(self, got: Any, what: str) -> float:
        """``got`` must be a real number (a Python or numpy number, or a one-element tensor)."""
        got = _from_numpy(got)
        if type(got) is torch.Tensor and got.numel() == 1 and not got.is_meta:
            if got.is_complex():
                raise CheckFailed(f"Tested: {what}.\nExpected a real number, got a complex one.")
            got = got.item()
        if type(got) not in (int, float) or not math.isfinite(got):
            shown = describe(got) if not isinstance(got, (int, float)) else repr(got)
            raise CheckFailed(f"Tested: {what}.\nExpected a finite number, got {shown}.")
        return float(got)


def _from_numpy(value: Any) -> Any:
    """Numpy arrays and numbers become tensors and floats; anything else is returned as is."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return value
    if isinstance(value, numpy.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(numpy.array(value, copy=True))
    if isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
        return float(value)
    return value


def _num(value: torch.Tensor) -> str:
    return f"{float(value):.4g}"


def _matching_mistake(
    got: torch.Tensor, mistakes: Sequence[tuple[Any, str]], atol: float, rtol: float
) -> str:
    for wrong, hint in mistakes:
        wrong_t = torch.as_tensor(wrong).detach().cpu().double()
        if wrong_t.shape == got.shape and torch.isclose(got, wrong_t, atol=atol, rtol=rtol).all():
            return hint
    return ""


# ----- the decorator -----------------------------------------------------------------------------
def check(name: str, points: float = 1.0, timeout: float = DEFAULT_TIMEOUT) -> Callable:
    """Make ``body(student_fn, t)`` a check: ``check_x(student_fn) -> CheckResult``.

    The result shows itself once (a coloured line on success) and is returned for the
    grader; ``quiet=True`` only returns it. ``points`` is the total when the body has no
    parts; with parts, each part's points count. ``timeout`` limits each call of the
    student's code, in seconds.
    """

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(student_fn: Callable = None, *args: Any, quiet: bool = False, **kwargs: Any):
            result = run_check(body, name, points, student_fn, *args, timeout=timeout, **kwargs)
            if not quiet:
                result.show()
            return result

        run.check_name = name
        run.points = points
        run.body = body
        run.timeout = timeout
        return run

    return decorate


def run_check(
    body: Callable,
    name: str,
    points: float,
    student_fn: Callable,
    *args: Any,
    variant: int = 0,
    runner: LiveRunner | Replayer | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> CheckResult:
    """Run a check body and convert its outcome into a :class:`CheckResult` (never raises)."""
    started = time.perf_counter()
    check_name = getattr(body, "__name__", "this check")
    if args or kwargs:
        return CheckResult(
            name,
            False,
            0.0,
            points,
            [f"{check_name} takes one argument, your function: {check_name}(your_function)."],
        )
    if student_fn is None:
        return CheckResult(
            name, False, 0.0, points, [f"{check_name} needs your function: {check_name}(fn)."]
        )
    if not callable(student_fn) or isinstance(student_fn, type):
        return CheckResult(
            name, False, 0.0, points, [f"Pass your function itself, not {describe(student_fn)}."]
        )
    t = Checker(name, variant=variant, runner=runner, timeout=timeout)
    outer: PartResult | None = None
    try:
        with torch.random.fork_rng(), _grad_mode_kept():
            torch.manual_seed(t.seed(0))
            try:
                body(student_fn, t)
            except NotAttempted:
                raise
            except CheckFailed as err:  # a failure outside any part: an implicit last part
                outer = PartResult("", points if not t.parts else 0.0, False, str(err))
    except NotAttempted:
        return CheckResult(
            name,
            False,
            0.0,
            _total(t.parts, points),
            ["still raises NotImplementedError; fill in the exercise, then run this cell again."],
            attempted=False,
            parts=t.parts,
        )
    except TimedOut:
        outer = PartResult("", points, False, "The check ran out of time.")
    except BaseException as err:  # the check's own code failed (environment, missing library)
        outer = PartResult("", points if not t.parts else 0.0, False, _internal_error(err))
    parts = list(t.parts)
    if outer is not None:
        parts.append(outer)
    if not parts:
        parts = [PartResult("", points, True)]
    max_score = _total(t.parts, points)
    score = sum(p.score for p in parts)
    failed = [p for p in parts if p.passed is not True]
    messages = [p.message for p in failed[:1] if p.message]
    return CheckResult(
        name,
        not failed,
        score,
        max_score,
        messages,
        parts=parts,
        seconds=time.perf_counter() - started,
    )


def _total(parts: list[PartResult], points: float) -> float:
    return sum(p.points for p in parts) if parts else points


@contextmanager
def _grad_mode_kept() -> Iterator[None]:
    mode = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(mode)


def _internal_error(err: BaseException) -> str:
    if isinstance(err, ImportError):
        missing = getattr(err, "name", None)
        if not missing or "." in missing:  # no module named, or a package lacking a submodule
            return (
                f"This check could not import what it needs ({err}). Run `labkit doctor`: it "
                "names the package that is missing or broken and the command that installs it. "
                "Your function was not at fault."
            )
        return (
            f"This check needs the package {missing!r}, which is not installed here. Install it "
            f"(pip install {missing}) and run the cell again; your function was not at fault."
        )
    return (
        f"The check itself stopped with {type(err).__name__}: {err}. This is probably not your "
        "fault: restart the kernel and run the notebook again, and tell your instructor if it "
        "persists."
    )


# ----- cells that use exercises ------------------------------------------------------------------
class Results(dict):
    """A dict for what the exercises compute, shared between cells.

    Reading an entry that is not there raises ``NotImplementedError``: the exercise or cell
    that fills it has not run yet, so a cell wrapped in ``skip_if_unattempted`` skips politely.
    """

    def __missing__(self, key):
        raise NotImplementedError(
            f"results[{key!r}] is not there yet: run the cell that computes it first (or "
            "finish its exercise)"
        )


@contextmanager
def skip_if_unattempted(what: str = "this cell") -> Iterator[None]:
    """Run a cell that uses exercises; if one is not done yet, say which, and go on."""
    try:
        yield
    except NotImplementedError as err:
        print(f"(skipped) {what}: {_waiting_for(err)}")
    except NameError as err:
        frames = traceback.extract_tb(err.__traceback__)
        if len(frames) > 1 and frames[-1].filename != frames[1].filename:
            raise  # a NameError inside a function from another cell: a real bug, show it
        print(
            f"(skipped) {what}: {getattr(err, 'name', None) or err} is not defined yet. Run the "
            "cells above this one first (Run > Run All Above Selected Cell)."
        )


def _waiting_for(err: NotImplementedError) -> str:
    message = str(err)
    if message.startswith("results["):
        return message + "."
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if not is_library(f.filename) and f.name != "<module>"]
    if own:
        return f"{own[-1].name}() is not implemented yet; finish its exercise above, then rerun."
    return "an exercise it uses is not done yet; finish it above, then rerun."
