"""The machinery behind every lab's checks: the :class:`Checker`, the one registry of a lab's
exercises (:class:`Lab`), and the helpers for cells that use exercises.

A check is a function registered with its lab's ``exercise`` decorator::

    LAB = Lab("03", "03_attribution_patching.ipynb")

    @LAB.exercise("3.1", "normalised metric", points=2)
    def check_normalised_metric(normalised_metric, t: Checker) -> None:
        ...

It becomes ``check_normalised_metric(student_fn) -> CheckResult`` and the lab's table entry for
the notebook's function ``normalised_metric``. The body receives the student's function and a
:class:`Checker` ``t``. It builds its problems first, calls the student's code only through
``t.call``, asks for reference values with ``t.expected`` and the values of known mistakes with
``t.mistakes`` (see ``labkit.checks.answers``), and compares with ``t.close``, ``t.true`` and
friends. The outcome becomes a :class:`~labkit.checks.results.CheckResult`:

* everything held         -> passed, one line shown, full score;
* ``NotImplementedError`` -> "not attempted", the notebook runs on;
* a failed comparison      -> what was tested, expected vs got, and a hint that names the
  mistake when the answer matches a known one;
* the student's code raised, ran too long, changed its inputs, left hooks on a model, or
  switched gradients off for good -> what happened, in one line, and what to do.

A check never raises: whatever happens comes back as a ``CheckResult``.

**Parts.** A check is split into independent parts (``with t.part("name"): ...``), each worth
some points, so a half-right function gets partial credit and every part's outcome is known.

**Variants.** In a notebook every check uses its fixed problems (``t.variant == 0``). The
instructor's grader runs the same checks on hidden variants: other seeds, shapes and model
families, picked with ``t.seed(...)`` and ``t.choice(...)``. What a check asks of ``t.expected``
must not depend on what the student's function returned: the notebook's answers are recorded
in that order.

**Where the student's code runs** is up to a runner: here (:class:`LiveRunner`) in a notebook;
in a sandboxed worker process when grading (the grader's runner lives in ``labkit.grading``).

Checks compare *behaviour* (seeded inputs with tolerances, invariants of the method), never
source code, and never show or hold a reference implementation.
"""

from __future__ import annotations

import math
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch

from labkit.checks.answers import Answers, MissingAnswer, NoAnswers, RecordedAnswers, Request
from labkit.checks.guards import WatchedModel, describe, guarded_call, is_library
from labkit.checks.results import (
    CheckFailed,
    CheckResult,
    NotAttempted,
    PartResult,
    StopChecking,
    TimedOut,
)

__all__ = [
    "CheckFailed",
    "CheckResult",
    "Checker",
    "Lab",
    "LiveRunner",
    "NotAttempted",
    "PartResult",
    "Results",
    "run_check",
    "skip_if_unattempted",
]

DEFAULT_TIMEOUT = 10.0  # seconds per call of the student's function


# ----- the checker -------------------------------------------------------------------------------
class Runner(Protocol):
    """Where the student's code runs: ``call`` returns what it returned, or raises
    :class:`NotAttempted`, :class:`StopChecking` or :class:`CheckFailed`."""

    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any: ...


class LiveRunner:
    """Calls the student's function right here (notebooks, tests)."""

    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return t._call_here(fn, args, kwargs)


class Checker:
    """Calls the student's code and compares; each comparison raises :class:`CheckFailed`.

    ``variant`` 0 is the notebook's fixed problems; the grader passes hidden variants.
    """

    def __init__(
        self,
        name: str,
        *,
        exercise: str = "",
        variant: int = 0,
        runner: Runner | None = None,
        answers: Answers | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.name = name
        self.exercise = exercise
        self.variant = variant
        self.runner = runner or LiveRunner()
        self.answers = answers or NoAnswers()
        self.timeout = timeout
        self.parts: list[PartResult] = []
        self._part_index = 0  # 0: outside any part
        self._call_index = 0
        self._asked: dict[tuple[int, str], int] = {}  # (part, name) -> requests so far
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

    # -- reference values ---------------------------------------------------------------------
    def _key(self, name: str) -> Request:
        slot = (self._part_index, name)
        count = self._asked.get(slot, 0)
        self._asked[slot] = count + 1
        return Request(self.exercise, self._part_index, name, count)

    def expected(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """What the reference of exercise ``name`` returns on these inputs.

        In a notebook the value was recorded by ``labkit build``; when grading, the reference
        computes it. Ask in an order that does not depend on the student's answers.
        """
        return self.answers.expected(self._key(name), name, args, kwargs)

    def mistakes(self, name: str, *args: Any, **kwargs: Any) -> Mistakes:
        """The known mistakes of exercise ``name`` on these inputs: (wrong value, hint) pairs,
        worked out only if an answer needs naming. Pass them to ``close(..., mistakes=...)``."""
        key = self._key("mistakes:" + name)
        return Mistakes(lambda: self.answers.mistakes(key, name, args, kwargs), eager=_EAGER[0])

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
        except (NotAttempted, TimedOut):
            raise
        except Exception as err:  # the check's own code failed: say so in this part, then stop
            result.passed, result.message = False, _internal_error(err)
            raise
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
            with torch.random.fork_rng(devices=[]):  # the student's random numbers are its own
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
        # Point at the entry furthest out of tolerance, not at the first one out of it.
        excess = (got_t - expected_t).abs() / (atol + rtol * expected_t.abs())
        excess = torch.where(ok, torch.zeros_like(excess), excess.nan_to_num(float("inf")))
        worst = int(excess.flatten().argmax())
        bad = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), ok.shape))
        where = f" at index {bad}" if bad else ""
        n_bad = int((~ok).sum())
        named = _matching_mistake(got_t, mistakes, atol, rtol)
        tail = f"\nHint: {named}" if named else (f"\nHint: {hint}" if hint else "")
        raise CheckFailed(
            f"Tested: {what}.\n"
            f"Largest mismatch{where}: expected {_num(expected_t[bad])}, got {_num(got_t[bad])} "
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


_EAGER = [False]  # True while ``labkit build`` records: every mistake is worked out


class Mistakes:
    """(wrong value, hint) pairs, worked out on first use. ``Mistakes + list`` and
    ``list + Mistakes`` give more of them."""

    def __init__(self, make: Callable[[], Sequence[tuple[Any, str]]], eager: bool = False):
        self._make: Callable[[], Sequence[tuple[Any, str]]] | None = make
        self._items: list[tuple[Any, str]] = []
        if eager:
            self.items()

    def items(self) -> list[tuple[Any, str]]:
        if self._make is not None:
            make, self._make = self._make, None
            self._items = [(pair[0], pair[1]) for pair in make()]
        return self._items

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        return iter(self.items())

    def __add__(self, other: Sequence[tuple[Any, str]] | Mistakes) -> Mistakes:
        return Mistakes(lambda: [*self, *other], eager=_EAGER[0])

    def __radd__(self, other: Sequence[tuple[Any, str]]) -> Mistakes:
        return Mistakes(lambda: [*other, *self], eager=_EAGER[0])


def _matching_mistake(
    got: torch.Tensor, mistakes: Sequence[tuple[Any, str]] | Mistakes, atol: float, rtol: float
) -> str:
    for wrong, hint in mistakes:
        try:
            wrong_t = torch.as_tensor(_from_numpy(wrong)).detach().cpu().double()
        except (TypeError, ValueError, RuntimeError):
            continue
        if wrong_t.shape == got.shape and torch.isclose(got, wrong_t, atol=atol, rtol=rtol).all():
            return str(hint)
    return ""


# ----- the registry ------------------------------------------------------------------------------
class Check:
    """One exercise's check: ``check_x(your_function)`` shows and returns a CheckResult."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        number: str,
        title: str,
        body: Callable[[Callable, Checker], None],
        points: float,
        timeout: float | None,
    ) -> None:
        self.lab, self.name, self.number, self.title = lab, name, number, title
        self.body, self.points, self.timeout = body, points, timeout
        self.__name__ = self.__qualname__ = f"check_{name}"
        self.__doc__ = body.__doc__
        self.__module__ = body.__module__
        self.__wrapped__ = body

    @property
    def check_name(self) -> str:
        return f"Exercise {self.number}: {self.title}"

    def __call__(
        self, student_fn: Callable | None = None, *args: Any, quiet: bool = False, **kwargs: Any
    ) -> CheckResult:
        if args or kwargs:
            result = CheckResult(
                self.check_name,
                False,
                0.0,
                self.points,
                [f"{self.__name__} takes one argument, your function: {self.__name__}(fn)."],
            )
        else:
            result = run_check(self, student_fn)
        if not quiet:
            result.show()
        return result

    def __repr__(self) -> str:
        return f"<check of exercise {self.number} ({self.name})>"


LABS: list[Lab] = []  # every lab whose checks are imported, for exercise_number()


def exercise_number(function: str) -> str | None:
    """The exercise number of a notebook function ("corrupt_subject" -> "2.4"), from the
    registry of the labs imported so far; None if it is not an exercise."""
    for lab in reversed(LABS):
        check = lab._checks.get(function)
        if check is not None:
            return check.number
    return None


def _number_key(number: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in number.replace(".", " ").split())


class Lab:
    """One lab's exercises, in notebook order: the only place an exercise is registered.

    ``@LAB.exercise("1.1", "saliency", points=2)`` on ``def check_saliency(saliency, t)`` adds
    the notebook's function ``saliency`` to ``LAB.exercises``; every exercise number a student
    sees comes from here (``LAB.number_of("saliency")`` is "1.1").
    """

    def __init__(self, number: str, notebook: str) -> None:
        self.number, self.notebook = number, notebook
        self._checks: dict[str, Check] = {}
        LABS.append(self)

    def exercise(
        self,
        number: str,
        title: str,
        *,
        points: float = 1.0,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_name: str | None = None,
    ) -> Callable[[Callable], Check]:
        """Register ``check_<name>`` as the check of exercise ``number`` ("1.1"). The notebook's
        function is ``<name>``; ``check_name`` names the check otherwise (a function named
        ``randomize_weights_``, checked by ``check_randomize_weights``)."""
        if not number.startswith(f"{int(self.number)}."):
            raise ValueError(f"Exercise {number} is not in lab {self.number}.")

        def register(body: Callable) -> Check:
            name = body.__name__.removeprefix("check_")
            if name == body.__name__:
                raise ValueError(f"Name the check check_<exercise>, not {body.__name__}.")
            if name in self._checks or any(c.number == number for c in self._checks.values()):
                raise ValueError(f"Exercise {number} ({name}) is registered twice.")
            check = Check(self, name, number, title, body, points, timeout)
            if check_name is not None:
                check.__name__ = check.__qualname__ = check_name
            self._checks[name] = check
            return check

        return register

    @property
    def exercises(self) -> dict[str, Check]:
        """Function name in the notebook -> its check, in exercise-number order."""
        ordered = sorted(self._checks.values(), key=lambda c: _number_key(c.number))
        return {c.name: c for c in ordered}

    def number_of(self, name: str) -> str:
        """The exercise number of the notebook's function ``name`` ("2.4")."""
        return self._checks[name].number

    def check_names(self) -> list[str]:
        """``check_<name>`` of every exercise, for a check module's ``__all__``."""
        return [c.__name__ for c in self.exercises.values()]

    def __repr__(self) -> str:
        return f"<lab {self.number}: {len(self._checks)} exercises>"


# ----- running a check ---------------------------------------------------------------------------
def run_check(
    check: Check,
    student_fn: Callable | None,
    *,
    variant: int = 0,
    runner: Runner | None = None,
    answers: Answers | None = None,
    timeout: float | None = None,
) -> CheckResult:
    """Run ``check`` on the student's function and turn the outcome into a
    :class:`CheckResult` (never raises). ``answers`` default to the notebook's recorded ones
    (variant 0 only); ``timeout`` to the check's own limit per call."""
    started = time.perf_counter()
    name, points = check.check_name, check.points
    if student_fn is None:
        return CheckResult(
            name,
            False,
            0.0,
            points,
            [f"{check.__name__} needs your function: {check.__name__}(fn)."],
        )
    if not callable(student_fn) or isinstance(student_fn, type):
        return CheckResult(
            name, False, 0.0, points, [f"Pass your function itself, not {describe(student_fn)}."]
        )
    if answers is None:
        answers = RecordedAnswers(check.lab.number) if variant == 0 else NoAnswers()
    t = Checker(
        name,
        exercise=check.name,
        variant=variant,
        runner=runner,
        answers=answers,
        timeout=check.timeout if timeout is None else timeout,
    )
    outer: PartResult | None = None
    try:
        with torch.random.fork_rng(), _grad_mode_kept():
            torch.manual_seed(t.seed(0))
            try:
                check.body(student_fn, t)
            except NotAttempted:
                raise
            except CheckFailed as err:  # a failure outside any part: an implicit last part
                outer = PartResult("", points if not t.parts else 0.0, False, str(err))
    except NotAttempted:
        return CheckResult(
            name,
            False,
            0.0,
            _declared_total(check, answers),
            ["still raises NotImplementedError; fill in the exercise, then run this cell again."],
            attempted=False,
            parts=t.parts,
        )
    except TimedOut:
        outer = PartResult("", points, False, "The check ran out of time.")
    except BaseException as err:  # the check's own code failed (environment, missing library)
        outer = PartResult("", points if not t.parts else 0.0, False, _internal_error(err))
    _use_recorded_points(t.parts, check, answers)
    parts = list(t.parts)
    if outer is not None:
        parts.append(outer)
    if not parts:
        parts = [PartResult("", _declared_total(check, answers), True)]
    max_score = _total(t.parts, _declared_total(check, answers))
    score = sum(p.score for p in parts)
    failed = [p for p in parts if p.passed is not True]
    messages = [p.message for p in failed if p.message][:1]
    return CheckResult(
        name,
        not failed,
        score,
        max_score,
        messages,
        parts=parts,
        seconds=time.perf_counter() - started,
        notebook=isinstance(answers, RecordedAnswers),
    )


def _recorded_points(check: Check, answers: Answers | None) -> list[float] | None:
    """The part points the grader uses (``grading.toml`` applied), as ``labkit build``
    recorded them; None where nothing was recorded (hidden variants, tests)."""
    if not isinstance(answers, RecordedAnswers):
        return None
    found = answers.table.get(f"points|{check.name}")
    if isinstance(found, list) and all(isinstance(p, (int, float)) for p in found):
        return [float(p) for p in found]
    return None


def _declared_total(check: Check, answers: Answers | None) -> float:
    recorded = _recorded_points(check, answers)
    return sum(recorded) if recorded is not None else float(check.points)


def _use_recorded_points(parts: list[PartResult], check: Check, answers: Answers | None) -> None:
    """Give each part the points the grader gives it, so the notebook shows the same maximum
    before an exercise is attempted, after, and in the gradebook."""
    recorded = _recorded_points(check, answers)
    real = [p for p in parts if p.name or p.points]
    if recorded is not None and len(recorded) == len(real):
        for part, value in zip(real, recorded, strict=True):
            part.points = value


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
    if isinstance(err, MissingAnswer):
        return str(err)
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
    """Run a cell that uses exercises; if one is not done yet, say which in one line (what the
    cell printed before it stopped is cleared), and go on."""
    try:
        yield
    except NotImplementedError as err:
        waiting, function = _waiting_for(err)
        _SKIPPED.append((waiting, function, _user_function(function)))
        _one_line(f"(skipped) {what}: {waiting}")
    except NameError as err:
        frames = traceback.extract_tb(err.__traceback__)
        if len(frames) > 1 and frames[-1].filename != frames[1].filename:
            raise  # a NameError inside a function from another cell: a real bug, show it
        name = getattr(err, "name", None) or err
        # A cell above was skipped for an exercise the student has not redefined since: the
        # name is missing because of it.
        still = [
            w for w, fn, obj in _SKIPPED if fn and obj is not None and _user_function(fn) is obj
        ]
        if still:
            _one_line(f"(skipped) {what}: it needs {name}, from a cell above that was skipped "
                      f"because {still[-1]}")  # fmt: skip
        else:
            _one_line(
                f"(skipped) {what}: {name} is not defined yet. Run the cells above this one "
                "first (Run > Run All Above Selected Cell)."
            )


_SKIPPED: list[tuple[str, str, Any]] = []  # (why, function, the function object) of skipped cells


def _user_function(name: str) -> Any:
    """The notebook's current binding of ``name`` (None outside a notebook)."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return ipython.user_ns.get(name) if ipython is not None and name else None


def _one_line(text: str) -> None:
    """Clear the cell's output (a table header, a progress bar at 0/8), then print ``text``."""
    shell = sys.modules.get("IPython")
    if shell is not None and getattr(shell, "get_ipython", lambda: None)() is not None:
        from IPython.display import clear_output

        clear_output()
    print(text)


def _waiting_for(err: NotImplementedError) -> tuple[str, str]:
    """Why a cell stopped, for the student, and the exercise function it stopped in."""
    message = str(err)
    if message.startswith("results["):
        return message + ".", ""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if not is_library(f.filename) and f.name != "<module>"]
    if own:
        name = own[-1].name
        number = exercise_number(name)
        which = f"exercise {number} ({name})" if number else f"{name}()"
        return f"{which} is not implemented yet: finish it above, then rerun this cell.", name
    return "an exercise it uses is not done yet: finish it above, then rerun this cell.", ""
