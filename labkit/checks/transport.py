"""Where the student's code runs: here (:class:`LiveRunner`), or recorded in a sandboxed
process (:class:`Recorder`) and replayed in the grader's own process (:class:`Replayer`).

A recording holds only plain data (tensors, numbers, strings, lists), so the grader loads it
with ``torch.load(weights_only=True)`` and compares it without running student code.

A function that works in place on a module it is given (``randomize_weights_(net)``) changes
that module in the sandbox only. The recording keeps the new values of every parameter and
buffer it changed, and the replay writes them into the grader's copy of the module, so a check
that inspects the module after the call sees what the student's function did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from labkit.checks.guards import describe
from labkit.checks.results import CheckFailed, NotAttempted, StopChecking

if TYPE_CHECKING:
    from labkit.checks.core import Checker

MAX_RECORDED_ELEMENTS = 5_000_000  # a result larger than this is not a plausible answer


# ----- runners: where the student's code runs ----------------------------------------------------
class Unsupported:
    """Stands in for a result that cannot cross to the grader (a subclass, a meta tensor...)."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return f"<{self.description}>"


class RecordedFunction:
    """Stands in, in the grader, for a function that the student's function returned;
    ``handle`` says where it lives (a number in a worker process, for example)."""

    def __init__(self, handle: Any = None) -> None:
        self.handle = handle

    def __call__(self, *args, **kwargs):
        raise CheckFailed("A recorded function can only be called through t.call.")


class LiveRunner:
    """Calls the student's function right here (notebooks, tests)."""

    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return t._call_here(fn, args, kwargs)


class Recorder(LiveRunner):
    """Calls the student's code here, and records each outcome as plain data for the grader.

    Runs in the sandboxed process that executes student code. ``outcomes`` maps
    ``"part/call"`` to a value (tensors, numbers, strings, lists), or to what went wrong.
    """

    def __init__(self) -> None:
        self.outcomes: dict[str, Any] = {}

    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        key = t._call_key()
        modules = module_arguments(args, kwargs)
        before = {where: module_state(module) for where, module in modules.items()}
        try:
            value = t._call_here(fn, args, kwargs)
        except NotAttempted as err:
            self.outcomes[key] = {"kind": "not attempted", "message": str(err)}
            raise
        except StopChecking as err:
            self.outcomes[key] = {"kind": "timeout", "message": str(err)}
            raise
        except CheckFailed as err:
            self.outcomes[key] = {"kind": "failed", "message": str(err)}
            raise
        outcome = {"kind": "value", "value": transportable(value)}
        changed = {
            where: state
            for where, module in modules.items()
            if (state := changed_state(module, before[where]))
        }
        if changed:
            outcome["modules"] = changed
        self.outcomes[key] = outcome
        return value


class Replayer:
    """Returns the outcomes a :class:`Recorder` saved, in the grader's own process."""

    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes

    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        outcome = self.outcomes.get(t._call_key())
        if not isinstance(outcome, dict):
            raise CheckFailed(
                "Your code never got to this call while it was graded (it stopped earlier or "
                "its process was ended)."
            )
        kind = outcome.get("kind")
        if kind == "not attempted":
            raise NotAttempted(str(outcome.get("message", "")))
        if kind == "failed":
            raise CheckFailed(str(outcome.get("message", "")))
        if kind == "timeout":
            raise StopChecking(str(outcome.get("message", "")))
        modules = module_arguments(args, kwargs)
        changed = outcome.get("modules")
        for where, state in (changed if isinstance(changed, dict) else {}).items():
            if where in modules and isinstance(state, dict):
                load_state(modules[where], state)
        return restore(outcome.get("value"))


# ----- modules changed in place ------------------------------------------------------------------
def module_arguments(args: tuple, kwargs: dict) -> dict[str, torch.nn.Module]:
    """The arguments that are modules, keyed by position ("0") or keyword ("k:name")."""
    found = {str(i): a for i, a in enumerate(args) if isinstance(a, torch.nn.Module)}
    found.update({f"k:{k}": v for k, v in kwargs.items() if isinstance(v, torch.nn.Module)})
    return found


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_state(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> dict:
    """The parameters and buffers of ``module`` that differ from ``before``, as plain tensors."""
    changed = {}
    for name, value in module.state_dict().items():
        old = before.get(name)
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            continue
        if old is None or value.shape != old.shape or not torch.equal(value.detach(), old):
            if value.numel() <= MAX_RECORDED_ELEMENTS:
                changed[name] = value.detach().to("cpu", copy=True).as_subclass(torch.Tensor)
    return changed


def load_state(module: torch.nn.Module, state: dict) -> None:
    """Write recorded values into ``module`` (entries of another name or shape are ignored)."""
    current = module.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            target = current.get(name)
            if (
                target is not None
                and type(value) is torch.Tensor
                and value.shape == target.shape
                and value.dtype.is_floating_point == target.dtype.is_floating_point
            ):
                target.copy_(value)


def transportable(value: Any, depth: int = 0) -> Any:
    """Plain data a grader can load with torch.load(weights_only=True)."""
    if depth > 4:
        return {"__unsupported__": "a deeply nested structure"}
    if (
        value is None
        or isinstance(value, (bool, int, float, str))
        and type(value)
        in (
            bool,
            int,
            float,
            str,
        )
    ):
        return value
    if type(value) is torch.Tensor:
        if value.is_meta:
            return {"__unsupported__": "a tensor on the 'meta' device (it holds no values)"}
        if value.layout != torch.strided:
            return {"__unsupported__": f"a {value.layout} tensor (use .to_dense())"}
        if value.numel() > MAX_RECORDED_ELEMENTS:
            return {"__unsupported__": f"a tensor with {value.numel()} elements (far too many)"}
        return value.detach().to("cpu", copy=True)
    try:
        import numpy as np

        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            if value.size > MAX_RECORDED_ELEMENTS:
                return {"__unsupported__": "a numpy array with far too many elements"}
            return {"__numpy__": torch.from_numpy(np.array(value, dtype=value.dtype, copy=True))}
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return {"__numpy_scalar__": float(value)}
    except ImportError:
        pass
    if type(value) in (list, tuple):
        items = [transportable(v, depth + 1) for v in value[:10_000]]
        return items if type(value) is list else {"__tuple__": items}
    if type(value) is dict and all(type(k) in (str, int) for k in value):
        if len(value) > 10_000:
            return {"__unsupported__": "a dict with far too many keys"}
        return {"__dict__": [[k, transportable(v, depth + 1)] for k, v in value.items()]}
    if callable(value) and not isinstance(value, torch.Tensor):
        return {"__function__": True}
    return {"__unsupported__": describe(value)}


def restore(value: Any) -> Any:
    if isinstance(value, list):
        return [restore(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(restore(v) for v in value["__tuple__"])
        if "__dict__" in value:
            pairs = value["__dict__"]
            return {k: restore(v) for k, v in pairs if type(k) in (str, int)}
        if "__numpy__" in value:
            return value["__numpy__"].numpy()
        if "__numpy_scalar__" in value:
            import numpy as np

            return np.float64(value["__numpy_scalar__"])
        if "__function__" in value:
            return RecordedFunction(value["__function__"])
        return Unsupported(str(value.get("__unsupported__", "an unsupported object")))
    if type(value) is torch.Tensor or value is None or isinstance(value, (bool, int, float, str)):
        return value
    return Unsupported("an unsupported object")
