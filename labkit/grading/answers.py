"""The instructor's answers: references and known mistakes, computed in the grader's process.

A check asks ``t.expected(name, *inputs)`` and ``t.mistakes(name, *inputs)``. Here the
answers are worked out:

* ``name`` is an exercise of the solution notebook (``"saliency"``): its reference is the
  solution's own function, loaded with the one definitions rule (``labkit.notebooks``);
* or a name that the lab's **answer key** (``labkit.grading.answer_keys.labNN``) defines,
  for a value derived from the solution (``"normalised_metric@logits"``: the metric the
  solution returns, applied to some logits);
* the mistakes of ``name`` are the answer key's plausible wrong implementations, each with the
  hint that names it.

This module and the answer keys are the instructor's: the student release leaves
``labkit.grading`` out, and no worker can import it. ``labkit build`` records the answers
of the notebook's own problems (:func:`record_lab`), which is all a student's check needs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labkit.checks.answers import Request
from labkit.checks.guards import clone_inputs

__all__ = [
    "AnswerKey",
    "ComputedAnswers",
    "RecordingAnswers",
    "load_answer_key",
    "record_lab",
]


# ----- the answer key of a lab -------------------------------------------------------------------
@dataclass
class Mistake:
    hint: str
    compute: Callable[..., Any]  # (solution namespace, *inputs) -> the wrong value


@dataclass
class AnswerKey:
    """A lab's extra references and its catalogue of mistakes.

    ``@KEY.reference("name")`` registers ``fn(sol, *inputs)``; ``@KEY.mistake("name", hint)``
    registers a wrong answer ``fn(sol, *inputs)`` of the reference ``name``. ``sol`` holds the
    solution notebook's definitions as attributes (``sol.saliency``).
    """

    lab: str
    references: dict[str, Callable[..., Any]] = field(default_factory=dict)
    mistakes: dict[str, list[Mistake]] = field(default_factory=dict)

    def reference(self, name: str) -> Callable[[Callable], Callable]:
        def register(fn: Callable) -> Callable:
            if name in self.references:
                raise ValueError(f"The reference {name!r} is registered twice.")
            self.references[name] = fn
            return fn

        return register

    def mistake(self, name: str, hint: str) -> Callable[[Callable], Callable]:
        if not hint.strip():
            raise ValueError(f"A mistake of {name!r} needs a hint that names it.")

        def register(fn: Callable) -> Callable:
            self.mistakes.setdefault(name, []).append(Mistake(hint, fn))
            return fn

        return register


def load_answer_key(lab: str) -> AnswerKey:
    """The answer key of lab ``lab`` ("01"); an empty one if the lab has none."""
    name = f"labkit.grading.answer_keys.lab{lab}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return AnswerKey(lab)
    return module.KEY


# ----- computing answers -------------------------------------------------------------------------
def digest(value: Any, depth: int = 0) -> str | None:
    """A fingerprint of an input (tensors by their bytes, models by their weights, functions by
    their code and what they close over); None when a value cannot be fingerprinted."""
    h = hashlib.sha256()

    def add(v: Any, d: int) -> bool:
        if d > 6:
            return False
        model = getattr(v, "model", None)
        if isinstance(model, torch.nn.Module) and not isinstance(v, torch.nn.Module):
            h.update(b"labmodel")
            return add(model, d + 1)
        if isinstance(v, torch.Tensor):
            if type(v) is not torch.Tensor and not isinstance(v, torch.nn.Parameter):
                return False
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}{v.requires_grad}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            return True
        if isinstance(v, torch.nn.Module):
            h.update(f"M{type(v).__module__}.{type(v).__qualname__}".encode())
            return all(add(t, d + 1) for t in v.state_dict().values())
        if v is None or type(v) in (bool, int, float, str, bytes, torch.dtype, torch.device):
            h.update(f"{type(v).__name__}:{v!r}".encode())
            return True
        if type(v) in (list, tuple):
            h.update(f"{type(v).__name__}{len(v)}".encode())
            return all(add(x, d + 1) for x in v)
        if type(v) is dict:
            h.update(f"dict{len(v)}".encode())
            return all(add(k, d + 1) and add(x, d + 1) for k, x in v.items())
        if isinstance(v, types.FunctionType):
            code = v.__code__
            h.update(f"F{v.__module__}.{v.__qualname__}".encode() + code.co_code)
            h.update(repr(code.co_consts).encode())
            cells = [c.cell_contents for c in v.__closure__ or ()]
            return all(add(x, d + 1) for x in [*cells, v.__defaults__, v.__kwdefaults__])
        if isinstance(v, types.MethodType):
            return add(v.__func__, d + 1) and add(v.__self__, d + 1)
        return False

    return h.hexdigest() if add(value, depth) else None


def _solution_namespace(solution: dict | types.SimpleNamespace) -> types.SimpleNamespace:
    if isinstance(solution, types.SimpleNamespace):
        return solution
    return types.SimpleNamespace(**{k: v for k, v in solution.items() if not k.startswith("__")})


class ComputedAnswers:
    """Answers worked out by the references, cached by their inputs (every student of a run
    gets the same hidden problems, so each is computed once)."""

    def __init__(self, key: AnswerKey, solution: dict | types.SimpleNamespace) -> None:
        self.key = key
        self.sol = _solution_namespace(solution)
        self._cache: dict[tuple[str, str], Any] = {}

    def _reference(self, name: str) -> Callable[..., Any]:
        if name in self.key.references:
            fn = self.key.references[name]
            return lambda *a, **k: fn(self.sol, *a, **k)
        found = getattr(self.sol, name, None)
        if not callable(found):
            raise LookupError(
                f"No reference named {name!r} for lab {self.key.lab}: the solution notebook "
                "defines no such function, and the lab's answer key has no such reference."
            )
        return found

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run a reference on copies of the inputs, with its own random state (so that a
        cached answer and a computed one leave the check's random numbers alike)."""
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(0)
            return fn(*clone_inputs(args), **clone_inputs(kwargs))

    def _cached(self, kind: str, name: str, args: tuple, kwargs: dict, make: Callable) -> Any:
        fingerprint = digest((args, kwargs))
        if fingerprint is None:
            return make()
        slot = (f"{kind}:{name}", fingerprint)
        if slot not in self._cache:
            self._cache[slot] = make()
        return copy.deepcopy(self._cache[slot])

    def expected(self, request: Request, name: str, args: tuple, kwargs: dict) -> Any:
        reference = self._reference(name)
        return self._cached(
            "expected", name, args, kwargs, lambda: _plain(self._run(reference, args, kwargs))
        )

    def mistakes(self, request: Request, name: str, args: tuple, kwargs: dict) -> list:
        def make() -> list:
            found = []
            for mistake in self.key.mistakes.get(name, []):
                wrong = functools.partial(mistake.compute, self.sol)
                try:
                    value = self._run(wrong, args, kwargs)
                except Exception:  # noqa: BLE001 -- a mistake that does not apply here
                    continue
                found.append((_plain(value), mistake.hint))
            return found

        return self._cached("mistakes", name, args, kwargs, make)


def _plain(value: Any) -> Any:
    """Detached CPU copies of the tensors in an answer (answers are data)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class RecordingAnswers:
    """Computed answers, each also written into ``table`` under its request's name."""

    def __init__(self, inner: ComputedAnswers, table: dict[str, Any]) -> None:
        self.inner, self.table = inner, table

    def expected(self, request: Request, name: str, args: tuple, kwargs: dict) -> Any:
        value = self.inner.expected(request, name, args, kwargs)
        self.table[str(request)] = value
        return value

    def mistakes(self, request: Request, name: str, args: tuple, kwargs: dict) -> list:
        found = self.inner.mistakes(request, name, args, kwargs)
        self.table[str(request)] = [[value, hint] for value, hint in found]
        return found


# ----- recording a lab's answers -----------------------------------------------------------------
class RecordingError(RuntimeError):
    """The solution does not pass its own checks, so nothing can be recorded."""


def record_lab(lab: str, solution: Path) -> dict[str, Any]:
    """Run every check of lab ``lab`` on the solution notebook's functions, on the notebook's
    own problems, and return every answer the checks asked for (request name -> value)."""
    from labkit.checks import core
    from labkit.notebooks import notebook_definitions

    module = importlib.import_module(f"labkit.checks.lab{lab}")
    from labkit.grading.points import load_points, part_points

    namespace = notebook_definitions(solution, module_name=f"solution:{lab}")
    answers = ComputedAnswers(load_answer_key(lab), namespace)
    points = load_points(None, lab)  # grading.toml where `labkit build` runs, if there is one
    table: dict[str, Any] = {}
    core._EAGER[0] = True
    try:
        for name, check in module.LAB.exercises.items():
            if not callable(namespace.get(name)):
                raise RecordingError(f"{solution} does not define the exercise {name}.")
            result = core.run_check(
                check, namespace[name], answers=RecordingAnswers(answers, table)
            )
            if not result.passed:
                raise RecordingError(
                    f"The solution's {name} fails its own check ({check.check_name}):\n"
                    + result.report()
                )
            parts = [(p.name, p.points) for p in result.parts if p.name or p.points]
            table[f"points|{name}"] = part_points(points, name, parts or [("", check.points)])
    finally:
        core._EAGER[0] = False
    return table


# ----- the recordings students get ----------------------------------------------------------------
RECORDINGS = Path(__file__).resolve().parents[1] / "checks" / "expected"


def same_answers(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Whether two recorded answers agree (tensors to float noise, everything else exactly)."""
    import numpy

    if isinstance(a, numpy.ndarray):
        a = torch.from_numpy(a)
    if isinstance(b, numpy.ndarray):
        b = torch.from_numpy(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.dtype.is_floating_point:
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= atol + rtol * abs(b) or (a != a and b != b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_answers(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answers(a[k], b[k], rtol, atol) for k in a)
    return type(a) is type(b) and a == b


def write_recordings(
    solutions: Path,
    check_only: bool = False,
    folder: Path = RECORDINGS,
    labs: list[str] | None = None,
) -> list[str]:
    """Record every lab's answers (or those of ``labs``, e.g. ["01"]) from its solution
    notebook into ``folder`` (what ``labkit build`` does); returns the recordings that were (or,
    with ``check_only``, would be) rewritten."""
    from labkit import plaindata
    from labkit.checks.answers import recording_name

    changed = []
    for path in sorted(Path(solutions).glob("*.ipynb")):
        lab = path.name.split("_", 1)[0]
        if labs is not None and lab not in labs:
            continue
        try:
            importlib.import_module(f"labkit.checks.lab{lab}")
        except ModuleNotFoundError:
            continue
        table = record_lab(lab, path)
        target = Path(folder) / recording_name(lab)
        limits = plaindata.Limits(max_bytes=1 << 30, max_items=10_000_000, max_elements=50_000_000)
        old = None
        if target.exists():
            try:
                old = plaindata.decode(target.read_bytes(), limits)
            except plaindata.PlainDataError:
                old = None
        if old is not None and same_answers(old, table):
            continue
        changed.append(str(target))
        if not check_only:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_bytes(plaindata.encode(table, limits))
            partial.replace(target)
    return changed
