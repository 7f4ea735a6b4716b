"""Find code that would mix CPU and GPU tensors, on a machine without a GPU.

On Colab's GPU runtime ``load_model()`` puts the model on CUDA, while ``torch.zeros(3)`` or
``torch.arange(n)`` still makes a CPU tensor; an operation that combines the two fails there
("Expected all tensors to be on the same device"). :class:`DeviceGuard` finds such operations
on a CPU-only machine. Every tensor gets a side:

* ``host``: made by a factory without ``device=`` (``torch.zeros(3)``, ``torch.tensor([...])``,
  ``torch.randn(..., generator=g)``, ``torch.from_numpy``) or moved with ``.cpu()``;
* ``device``: a parameter or buffer of the guarded model, or computed from one (0-d ones
  included: CUDA accepts a 0-d CPU tensor next to CUDA tensors, not the other way round);
* neutral: everything else (``device=`` given, ``.to(x.device)``, tiny test models).

An operation whose inputs include a host tensor and a device tensor (both with at least one
dimension, as CUDA accepts 0-d CPU tensors) is recorded, with the code line that ran it.
Indexing a device tensor with host indices is allowed, as on CUDA.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import asdict, dataclass

import torch
from torch.overrides import TorchFunctionMode

_SIDE = "_labkit_side"
_FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace,
    torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.tensor, torch.as_tensor, torch.from_numpy, torch.scalar_tensor,
}  # fmt: skip
_CROSS_DEVICE_OK = {
    torch.Tensor.__getitem__,
    torch.Tensor.__setitem__,
    torch.Tensor.copy_,
    torch.Tensor.to,
    torch.Tensor.cpu,
    torch.Tensor.cuda,
}
_LIBRARY_PARTS = ("/torch/", "/transformers/", "/device_guard.py", "/contextlib.py")


@dataclass(frozen=True)
class Mix:
    """One operation that mixes a host tensor with a model tensor."""

    where: str  # "file:line in function" of the innermost frame outside torch/transformers
    code: str  # that line
    op: str  # the torch function
    cell: str  # the notebook cell's source, when run in a notebook ('' otherwise)


def _tensors(args, kwargs) -> list[torch.Tensor]:
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _mark(out, side: str | None) -> None:
    if side is None:
        return
    if isinstance(out, torch.Tensor):
        out.__dict__[_SIDE] = side
    elif isinstance(out, list | tuple):
        for value in out:
            if isinstance(value, torch.Tensor):
                value.__dict__[_SIDE] = side


class DeviceGuard(TorchFunctionMode):
    """Records operations that would mix a CPU tensor with a GPU model's tensors."""

    def __init__(self, log: str | None = None) -> None:
        super().__init__()
        self.mixes: list[Mix] = []
        self.cell = ""  # set by the notebook's pre_run_cell event
        self.log = log  # each new finding is appended there at once (JSON lines)

    def watch(self, model: torch.nn.Module) -> None:
        """Treat ``model``'s parameters and buffers as living on the GPU."""
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.__dict__[_SIDE] = "device"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FACTORIES:
            given = args[0] if args else kwargs.get("data")
            if isinstance(given, torch.Tensor):  # as_tensor(t), tensor(t): t's device
                if out is not given:
                    _mark(out, given.__dict__.get(_SIDE))
            elif kwargs.get("device") is None:
                _mark(out, "host")
            return out
        if func is torch.Tensor.cpu:
            _mark(out, "host")
            return out
        if func is torch.Tensor.cuda or (
            func is torch.Tensor.to
            and (
                kwargs.get("device") is not None
                or any(isinstance(a, str | torch.device | torch.Tensor) for a in args[1:])
            )
        ):
            # .to(x.device): wherever the caller meant it to be. On a CPU-only machine .to()
            # may return its input itself, which keeps its side: return an alias instead.
            return out.view_as(out) if isinstance(out, torch.Tensor) else out
        tensors = _tensors(args, kwargs)
        # A 0-d CPU tensor may meet CUDA tensors; a 0-d CUDA tensor may not meet CPU ones.
        sides = {
            side
            for t in tensors
            if (side := t.__dict__.get(_SIDE, "neutral")) == "device" or t.dim() > 0
        }
        if not sides:  # only 0-d tensors: they keep their side
            sides = {t.__dict__.get(_SIDE, "neutral") for t in tensors}
        if "host" in sides and "device" in sides:
            if func not in _CROSS_DEVICE_OK:
                self._record(func)
            _mark(out, "device")
        elif "device" in sides:
            _mark(out, "device")
        elif sides == {"host"}:
            _mark(out, "host")
        return out

    def _record(self, func) -> None:
        stack = traceback.extract_stack()[:-2]
        frame = next(
            (f for f in reversed(stack) if not any(p in f.filename for p in _LIBRARY_PARTS)),
            stack[-1],
        )
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        mix = Mix(f"{frame.filename}:{frame.lineno} in {frame.name}", frame.line or "", name,
                  self.cell)  # fmt: skip
        if mix in self.mixes:
            return
        self.mixes.append(mix)
        if self.log:
            with open(self.log, "a") as log:
                log.write(json.dumps(asdict(mix)) + "\n")


KERNEL_STARTUP = """\
# Written by tests/test_notebooks.py: the notebook runs as if the model sat on a GPU.
import sys

sys.path.insert(0, {tests!r})
import device_guard

device_guard.guard_this_kernel({log!r})
"""


def guard_this_kernel(log: str) -> DeviceGuard:
    """In a notebook's kernel (from an IPython startup file): every model that
    ``labkit.load_model()`` returns is watched, each cell's source is remembered for the report,
    and each finding is appended to ``log`` at once (so it survives a dead kernel)."""
    from pathlib import Path

    from IPython import get_ipython

    import labkit
    import labkit.models

    Path(log).touch()  # the test knows the guard was installed
    guard = DeviceGuard(log=log)
    load_model = labkit.load_model

    def load_watched_model(*args, **kwargs):
        lm = load_model(*args, **kwargs)
        guard.watch(lm.model)  # as if this model sat on a GPU
        return lm

    labkit.load_model = labkit.models.load_model = load_watched_model
    get_ipython().events.register(
        "pre_run_cell", lambda info: setattr(guard, "cell", info.raw_cell)
    )
    guard.__enter__()
    return guard


def read_log(log) -> list[dict]:
    """The findings written to ``log`` (none if it does not exist)."""
    from pathlib import Path

    path = Path(log)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def describe(mixes: list[dict], sources: list[str], name: str, root: str = "") -> list[str]:
    """One line per distinct finding: the notebook cell, the operation, where, and the code."""
    lines = []
    for mix in {json.dumps(m, sort_keys=True): m for m in mixes}.values():  # unique
        cell = sources.index(mix["cell"]) if mix["cell"] in sources else "explorer check"
        where = mix["where"].replace(root + "/", "") if root else mix["where"]
        code = mix["code"] or mix["cell"].strip().splitlines()[0]
        lines.append(f"{name} cell {cell}: {mix['op']} at {where}: {code}")
    return lines


ADVICE = (
    "These lines combine a tensor made without device= with the model's tensors; on a GPU "
    "they fail. Create the tensor on the model's device (device=lm.device, or "
    "x.to(embeddings.device)):\n"
)
