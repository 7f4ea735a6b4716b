"""The grader's runner: each ``t.call`` of a check becomes one request to the worker that holds
the student's definitions, while the check itself runs here, in the grader's process.

* A request carries the function's name and the inputs (pickled; models once per worker, then
  by number). :class:`Outbox` refuses to send code: a function or class can only travel as a
  reference to an importable module that is not the instructor's (``labkit.grading``), so a
  reference or a check's own helper never reaches the worker.
* A reply is plain data (``labkit.plaindata``): capped in size before anything is allocated,
  parsed defensively, never unpickled.
* Time is kept here, on the grader's clock: a call that does not answer within its limit (plus
  a grace for pickling) ends the worker, and with it everything the worker started.
"""

from __future__ import annotations

import io
import pickle
import select
import time
import types
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from labkit import plaindata
from labkit.checks.guards import describe
from labkit.checks.results import CheckFailed, NotAttempted, StopChecking
from labkit.worker.channel import ChannelClosed, FrameTooLarge, read_frame, send_frame

if TYPE_CHECKING:
    from labkit.checks.core import Checker
    from labkit.grading.sandbox import Worker

GRACE_SECONDS = 10.0  # on top of a call's time limit, for pickling and unpickling
REPLY_LIMITS = plaindata.Limits()  # 64 MB, 5M elements per tensor
HELLO_SECONDS = 120.0  # defining a notebook: every statement has its own limit in the worker
MAX_MESSAGE_CHARS = 4000  # of a message the worker writes (it is student-controlled text)
FORBIDDEN_MODULES = ("labkit.grading",)


class StudentFunction:
    """Stands in, in the grader, for a function of the student's notebook (or one it returned)."""

    def __init__(self, handle: str | int, name: str = "") -> None:
        self.handle = handle
        self.__name__ = name or str(handle)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckFailed("The student's function can only be called through t.call.")

    def __repr__(self) -> str:
        return f"<student function {self.__name__}>"


class Outbox:
    """Pickles what the grader sends to a worker: data and models, never code of ours."""

    def __init__(self) -> None:
        self.sent: dict[int, tuple[int, Any]] = {}  # id(model) -> (number, model)
        outbox = self

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj: Any) -> int | None:
                entry = outbox.sent.get(id(obj))
                return None if entry is None or entry[1] is not obj else entry[0]

            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, (types.FunctionType, types.MethodType, type)):
                    module = getattr(obj, "__module__", "") or ""
                    if (
                        module.startswith(FORBIDDEN_MODULES)
                        or module == "__main__"
                        or (":" in module)
                    ):
                        raise pickle.PicklingError(
                            f"a check tried to send {describe(obj)} from {module} to the "
                            "student's code; checks send data and models only"
                        )
                return NotImplemented

        self.pickler = Pickler

    def dumps(self, message: Any) -> bytes:
        buffer = io.BytesIO()
        try:
            self.pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
        except (AttributeError, TypeError) as err:  # a local function or class, a lambda
            raise pickle.PicklingError(
                f"a check tried to send something that is not data to the student's code ({err})"
            ) from None
        return buffer.getvalue()


_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
    "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)  # fmt: skip


@contextmanager
def _without_hooks(model: Any):
    """A model pickles without its hooks (transformers' own output capturing, a check's):
    hooks are code, and the worker's copy needs none."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    saved = []
    for module in model.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks:
                saved.append((module, name, hooks))
                setattr(module, name, type(hooks)())
    try:
        yield
    finally:
        for module, name, hooks in saved:
            setattr(module, name, hooks)


def _is_model(obj: Any) -> bool:
    return isinstance(getattr(obj, "model", obj), torch.nn.Module)


def _cap(text: Any) -> str:
    text = str(text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " [...]"


class RemoteRunner:
    """Runs a check's calls in one worker. ``hello`` is what the worker said after defining
    the notebook (the names it defined, notes for the student)."""

    def __init__(self, worker: Worker, cells: list[tuple[int, str]], seconds_per_call: float):
        self.worker = worker
        self.seconds_per_call = seconds_per_call
        self.outbox = Outbox()
        self.ended: str = ""
        self.hello: dict = {}
        self.deadline: float | None = None  # time.monotonic() by which this exercise must end
        self.waiting: Callable[[], Any] | None = None  # a context manager entered while waiting
        try:
            send_frame(worker.channel, pickle.dumps([(int(i), str(s)) for i, s in cells]))
            self.hello = self._receive(time.monotonic() + HELLO_SECONDS)
        except TimeoutError:
            self._end("defining the notebook's functions took too long")
        except (OSError, EOFError, plaindata.PlainDataError, OverflowError) as err:
            self._end(self._why(err))
        if not isinstance(self.hello, dict):
            self.hello = {}

    @property
    def defined(self) -> list[str]:
        names = self.hello.get("defined", [])
        return [str(n) for n in names if isinstance(n, str)][:10_000]

    @property
    def notes(self) -> list[str]:
        notes = self.hello.get("notes", [])
        return (
            [_cap(n) for n in notes if isinstance(n, str)][:50] if isinstance(notes, list) else []
        )

    def function(self, name: str) -> StudentFunction:
        return StudentFunction(name, name)

    # -- the runner interface used by Checker.call ---------------------------------------------
    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if isinstance(fn, plaindata.FunctionHandle):
            fn = StudentFunction(fn.number, "the function yours returned")
        if not isinstance(fn, StudentFunction):
            raise CheckFailed(f"Expected a function of your notebook here, got {describe(fn)}.")
        if self.ended:
            raise CheckFailed(f"Not run: {self.ended}")
        watch = [w.module for w in t._watched]
        limit = min(t.timeout if t.timeout is not None else 3600.0, self.seconds_per_call)
        started = time.monotonic()
        whole = self.deadline is not None and self.deadline - started < limit
        if whole:
            limit = max(self.deadline - started, 0.0)
        try:
            for obj in [*args, *kwargs.values(), *watch]:
                self._define(obj)
            send_frame(
                self.worker.channel,
                self.outbox.dumps(("call", fn.handle, args, kwargs, watch, limit)),
            )
            reply = self._receive(time.monotonic() + limit + (0 if whole else GRACE_SECONDS))
        except TimeoutError:
            if whole:
                self._end("this exercise ran out of time")
                raise StopChecking(
                    "Stopped: this exercise (all its tests together) ran past its time limit. "
                    "Look for a loop that never ends, or one that is far too slow."
                ) from None
            self._end(f"your code was stopped after {limit:g} s")
            raise StopChecking(
                f"Your function was stopped after {limit:.3g} s; a correct one takes well under "
                "a second here. Look for a loop that never ends (or a far too slow one)."
            ) from None
        except pickle.PicklingError:
            raise
        except (OSError, EOFError, MemoryError, plaindata.PlainDataError, OverflowError) as err:
            why = self._why(err)
            self._end(why)
            raise CheckFailed(f"While this call ran, {why}.") from None
        finally:
            t.slowest_call = max(t.slowest_call, time.monotonic() - started)
        if not isinstance(reply, dict):
            raise CheckFailed("Your code sent back something the grader cannot read.")
        kind = reply.get("kind")
        message = _cap(reply.get("message", ""))
        if kind == "not attempted":
            raise NotAttempted(message)
        if kind == "timeout":
            raise StopChecking(message)
        if kind == "missing":
            similar = [s for s in reply.get("similar", []) if isinstance(s, str)][:3]
            hint = f" Did you rename it to {', '.join(similar)}?" if similar else ""
            raise CheckFailed(f"Your notebook does not define `{fn.__name__}`.{hint}")
        if kind == "not callable":
            raise CheckFailed(
                f"`{fn.__name__}` is {_cap(reply.get('detail', 'not a function'))} in your "
                "notebook, not a function. Do not assign to the exercise's name."
            )
        if kind != "value":
            raise CheckFailed(message or "Your function failed.")
        self._bring_back(args, reply.get("changed"))
        return reply.get("value")

    # -- plumbing ------------------------------------------------------------------------------
    def _define(self, obj: Any) -> None:
        if not _is_model(obj) or id(obj) in self.outbox.sent:
            return
        if obj is not getattr(obj, "model", obj):  # a LabModel: its network first, so that the
            self._define(obj.model)  # worker's LabModel and watched network are one object
        number = len(self.outbox.sent)
        with _without_hooks(getattr(obj, "model", obj)):  # the grader's hooks stay here
            send_frame(self.worker.channel, self.outbox.dumps(("define", number, obj)))
        self.outbox.sent[id(obj)] = (number, obj)  # keep a reference: ids are never reused

    def _receive(self, deadline: float) -> Any:
        """The worker's next reply. While waiting, the slot's memory is watched where no
        control group does it."""
        with self.waiting() if self.waiting is not None else nullcontext():
            while True:  # wait in short steps (to watch memory), then read the whole frame
                wait = min(deadline - time.monotonic(), 0.25)
                if wait <= 0:
                    raise TimeoutError
                if select.select([self.worker.channel], [], [], wait)[0]:
                    data = read_frame(self.worker.channel, deadline, REPLY_LIMITS.max_bytes)
                    break
                if self.worker.memory_exceeded():
                    raise MemoryError
        return plaindata.decode(data, REPLY_LIMITS)

    def _why(self, err: BaseException) -> str:
        if isinstance(err, MemoryError) or self.worker.ran_out_of_memory():
            limit = self.worker.sandbox.limits.memory_mb
            return f"your code used more memory than the {limit} MB allowed, and was ended"
        if isinstance(err, FrameTooLarge):
            return "your function returned more data than any answer needs, and was ended"
        if isinstance(err, plaindata.PlainDataError):
            return f"your code sent back something that is not plain data ({err}), and was ended"
        if isinstance(err, ChannelClosed | EOFError | OSError):
            return (
                "your code ended its grading process (os._exit, sys.exit from a thread, a "
                "crash, or killing its own process)"
            )
        return f"the grading process failed ({type(err).__name__})"

    @staticmethod
    def _bring_back(args: tuple, changed: Any) -> None:
        """A module argument the student's function changed in place (randomised weights)
        gets the same new state here: same names, shapes and kinds of dtype only."""
        if not isinstance(changed, dict):
            return
        for index, state in changed.items():
            if not (isinstance(index, int) and 0 <= index < len(args) and isinstance(state, dict)):
                continue
            module = getattr(args[index], "model", args[index])
            if not isinstance(module, torch.nn.Module):
                continue
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

    def _end(self, why: str) -> None:
        self.ended = why
        self.worker.end(why)

    def close(self) -> None:
        """Say stop, then end the worker for good."""
        if not self.ended:
            try:
                send_frame(self.worker.channel, pickle.dumps(("stop",)))
            except OSError:
                pass
        self.worker.end(self.ended or "done")
