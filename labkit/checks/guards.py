"""Guards around a call of the student's code: a time limit, and checks that the call left its
inputs, the models and PyTorch's gradient mode as it found them.

A function that returns the right numbers but writes into its input, leaves a hook on the model
or switches gradients off for good breaks a *later* cell. The checks catch that at the call.
"""

from __future__ import annotations

import signal
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from labkit.checks.results import CheckFailed, NotAttempted, StopChecking, TimedOut

_LIBRARY_DIRS = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    if p
) + (str(Path(__file__).resolve().parents[1]),)


def is_library(filename: str) -> bool:
    if filename.startswith("<"):  # generated code: "<frozen ...>", networkx's "<... compilation 9>"
        return filename.startswith("<frozen") or "compilation" in filename
    try:
        resolved = str(Path(filename).resolve())
    except (OSError, ValueError):
        return False
    return resolved.startswith(_LIBRARY_DIRS)


def student_frame(err: BaseException) -> str:
    """Where in the student's own code the error came from: 'line N in fn_name'.

    The deepest frame that is not inside Python's library, an installed package or labkit:
    the student's line that called into torch or networkx, not the library's internals.
    """
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if not is_library(f.filename)]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return "unknown line"
    return f"line {frame.lineno} in {frame.name}"


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimedOut` in this thread after ``seconds`` (Unix main thread only)."""
    usable = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimedOut()

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    # Fire again every second: code that swallows the first alarm (a bare `except:` inside a
    # loop) is interrupted again.
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:  # an outer timer (e.g. a test runner's) keeps running
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


# ----- state a student's function must leave alone -----------------------------------------------
def tensors_in(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if type(value) is torch.Tensor or isinstance(value, torch.nn.Parameter):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors_in(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_in(item, f"{path}[{key!r}]")


def clone_inputs(value: Any) -> Any:
    """A copy of the plain data in ``value`` (tensors, lists, tuples, dicts); other objects
    (models, functions) are passed as they are."""
    if type(value) is torch.Tensor:
        copy = value.detach().clone()
        return copy.requires_grad_(value.requires_grad) if copy.is_floating_point() else copy
    if isinstance(value, list):
        return [clone_inputs(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clone_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_inputs(v) for k, v in value.items()}
    return value


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _is_library_hook(fn: Any) -> bool:
    """transformers installs its own output-capturing hooks lazily, on a model's first run."""
    return (getattr(fn, "__module__", None) or "").startswith("transformers.")


def hook_keys(module: torch.nn.Module) -> set[tuple[str, str, int]]:
    """(submodule, kind, handle id) of every hook on ``module`` that is not transformers' own."""
    return {
        (name, kind, key)
        for name, m in module.named_modules()
        for kind in _HOOK_DICTS
        for key, fn in getattr(m, kind, {}).items()
        if not _is_library_hook(fn)
    }


def hook_count(module: torch.nn.Module) -> int:
    """How many hooks (other than transformers' own) are registered on ``module``."""
    return len(hook_keys(module))


def global_hook_count() -> int:
    from torch.nn.modules import module as nn_module

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return sum(len(getattr(nn_module, name, {})) for name in names)


class WatchedModel:
    """A model whose weights, hooks and gradient flags must be the same after every call."""

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        self.module, self.name = module, name
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.requires_grad = {n: p.requires_grad for n, p in module.named_parameters()}
        self.hooks = hook_keys(module)

    def problems(self) -> list[str]:
        """What changed, and put it back so that the next call starts from the same model."""
        found = []
        leaked = hook_keys(self.module) - self.hooks
        if leaked:
            found.append(
                f"it left {len(leaked)} hook(s) registered on {self.name}"
                ". Remove hooks when done: use a `with` block (labkit.hooks.capture/patch/hooked) "
                "or call handle.remove() in a `finally`"
            )
            _remove_hooks(self.module, leaked)
        changed = [
            k
            for k, v in self.module.state_dict().items()
            if k not in self.state
            or v.shape != self.state[k].shape
            or not torch.equal(v.detach(), self.state[k])
        ]
        if changed:
            found.append(
                f"it changed the weights of {self.name} ({changed[0]}"
                + (f" and {len(changed) - 1} more" if len(changed) > 1 else "")
                + "). Never write into a model's parameters: work on copies of activations"
            )
            with torch.no_grad():
                for k, v in self.module.state_dict().items():
                    if k in self.state and v.shape == self.state[k].shape:
                        v.copy_(self.state[k])
        flags = {n: p.requires_grad for n, p in self.module.named_parameters()}
        if flags != self.requires_grad:
            found.append(
                f"it changed requires_grad on the parameters of {self.name}. The labs take "
                "gradients with respect to inputs and activations, never weights: leave the "
                "parameters frozen"
            )
            for n, p in self.module.named_parameters():
                p.requires_grad_(self.requires_grad.get(n, False))
        grads = [n for n, p in self.module.named_parameters() if p.grad is not None]
        if grads:
            found.append(
                f"it left gradients on the parameters of {self.name} ({grads[0]}.grad). Use "
                "torch.autograd.grad(output, inputs), which does not touch parameters"
            )
            for p in self.module.parameters():
                p.grad = None
        return found


def _remove_hooks(module: torch.nn.Module, leaked: set[tuple[str, str, int]]) -> None:
    """Remove exactly the hooks registered after the snapshot, so later checks work."""
    modules = dict(module.named_modules())
    for name, kind, key in leaked:
        m = modules[name]
        getattr(m, kind).pop(key, None)
        for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                      "_forward_pre_hooks_with_kwargs"):  # fmt: skip
            getattr(m, extra, {}).pop(key, None)


def describe(value: Any) -> str:
    """A short, safe description of any object (never calls methods of tensor subclasses)."""
    kind = type(value)
    if kind is torch.Tensor:
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, torch.Tensor):
        return f"a {kind.__name__} (a subclass of torch.Tensor)"
    if hasattr(value, "description") and type(value).__name__ == "Unsupported":
        return value.description
    if value is None:
        return "None"
    module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
    return f"a {module}{kind.__qualname__}"


def input_changes(given: tuple, originals: tuple) -> list[str]:
    """What the call changed in its inputs: ``given`` are the (args, kwargs) the student's code
    received, ``originals`` untouched copies of them."""
    found = []
    names = [f"argument {i + 1}" for i in range(len(given[0]))] + [
        f"argument {k!r}" for k in given[1]
    ]
    pairs = list(given[0]) + list(given[1].values())
    before = list(originals[0]) + list(originals[1].values())
    for name, now, then in zip(names, pairs, before, strict=True):
        for (path, tensor), (_, old) in zip(tensors_in(now), tensors_in(then), strict=False):
            where = f"{name}{path}"
            if tensor.requires_grad and not old.requires_grad:
                found.append(
                    f"it turned on requires_grad on its input ({where}); work on a copy: "
                    "detach it, clone it, then call requires_grad_() on the clone"
                )
            elif tensor.grad is not None:
                found.append(
                    f"it left a .grad on its input ({where}), so gradients would pile up "
                    "over calls; use torch.autograd.grad or a fresh copy of the input"
                )
            elif tensor.shape != old.shape or not torch.equal(tensor.detach(), old):
                found.append(
                    f"it changed its input ({where}) in place; the caller's tensor must "
                    "stay as it was: clone() before you write into it"
                )
    return found


def guarded_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    *,
    timeout: float | None,
    watched: Sequence[WatchedModel] = (),
) -> Any:
    """Call the student's ``fn`` with copies of ``args``/``kwargs``, under every guard.

    Raises :class:`NotAttempted` for ``NotImplementedError``, :class:`StopChecking` when the
    call runs past ``timeout`` seconds, and :class:`CheckFailed` (with a one-line message that
    names the problem) when it raises anything else, or returns after changing its inputs or a
    ``watched`` model, leaving hooks behind, or switching gradients off for good.
    Tensors are copied; models and other objects are passed as they are.
    """
    if not callable(fn):
        raise CheckFailed(f"Expected a function here, got {describe(fn)}.")
    given = [clone_inputs(a) for a in args], {k: clone_inputs(v) for k, v in kwargs.items()}
    originals = [clone_inputs(a) for a in args], {k: clone_inputs(v) for k, v in kwargs.items()}
    grad_mode = torch.is_grad_enabled()
    global_hooks = global_hook_count()
    try:
        with time_limit(timeout):
            value = fn(*given[0], **given[1])
    except TimedOut:
        raise StopChecking(
            f"Your function was stopped after {timeout:g} s; a correct one takes well under a "
            "second here. Look for a loop that never ends (or a far too slow one)."
        ) from None
    except NotImplementedError as err:
        raise NotAttempted(str(err)) from None
    except (CheckFailed, NotAttempted):
        raise
    except RecursionError as err:
        raise CheckFailed(
            f"Your function raised RecursionError ({student_frame(err)}): does a function call "
            "itself by mistake?"
        ) from None
    except (Exception, KeyboardInterrupt, SystemExit) as err:  # the student's bug, in a line
        detail = f": {err}" if str(err) else ""
        raise CheckFailed(
            f"Your function raised {type(err).__name__}{detail} ({student_frame(err)}).\n"
            "Hint: run it on its own in a cell to see the full traceback."
        ) from None
    finally:
        left_off = not torch.is_grad_enabled() and grad_mode
        torch.set_grad_enabled(grad_mode)
    problems = []
    if left_off:
        problems.append(
            "it switched gradients off for everything that runs after it "
            "(torch.set_grad_enabled(False) or no_grad().__enter__() without an exit). Use "
            "`with torch.no_grad():` around the lines that need it"
        )
    problems += input_changes(given, originals)
    for model in watched:
        problems += model.problems()
    if global_hook_count() != global_hooks:
        problems.append(
            "it left a global module hook registered (torch.nn.modules.module."
            "register_module_forward_hook); remove it before returning"
        )
    if problems:
        raise CheckFailed(
            "Your function returned, but " + "; and ".join(problems) + ".\nLater cells would "
            "see the damage, so this counts as a failure."
        )
    return value
