"""Run a student's code in a worker process, one call at a time, while the check runs here.

The instructor's grader runs every check body in its own process. Each ``t.call`` becomes a
request to a worker process that holds the student's definitions:

* the request (which function, copies of the inputs, the models to watch) is pickled by the
  grader and sent down a pipe;
* the worker calls the function under the same guards as a notebook check (time limit, inputs
  and models left alone, gradients left on) and sends back only plain data: tensors, numbers,
  strings and lists, loaded by the grader with ``torch.load(weights_only=True)``.

So the worker never sees a check's expected values, and nothing the student's code does there
(monkeypatching torch or labkit, lying tensor subclasses, ``os._exit``) reaches the grader.
Models are sent once per worker and then referred to by number.

>>> runner = start_worker(["def double(x):\\n    return 2 * x"])
>>> run_check(check_double.body, "double", 1, runner.function("double"), runner=runner)
>>> runner.close()
"""

from __future__ import annotations

import io
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from labkit.checks.guards import WatchedModel, guarded_call
from labkit.checks.results import CheckFailed, NotAttempted, StopChecking
from labkit.checks.transport import RecordedFunction, restore, transportable

if TYPE_CHECKING:
    from labkit.checks.core import Checker

__all__ = ["RemoteFunction", "RemoteRunner", "serve", "start_worker"]

MAX_REPLY_BYTES = 256 * 2**20  # a reply larger than this is not a plausible answer
GRACE_SECONDS = 10.0  # on top of a call's time limit, for pickling and unpickling


# ----- framing: 8-byte length, then the payload --------------------------------------------------
def _write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack("<Q", len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 2**20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None, limit: int | None = None) -> bytes:
    (size,) = struct.unpack("<Q", _read_exactly(fd, 8, deadline))
    if limit is not None and size > limit:
        raise OverflowError(size)
    return _read_exactly(fd, size, deadline)


# ----- the grader's side -------------------------------------------------------------------------
class RemoteFunction:
    """Stands in, in the grader, for a function that lives in the worker."""

    def __init__(self, handle: str | int, name: str = "") -> None:
        self.handle, self.__name__ = handle, name or str(handle)

    def __call__(self, *args, **kwargs):
        raise CheckFailed("A function in the worker can only be called through t.call.")

    def __repr__(self) -> str:
        return f"<student function {self.__name__}>"


def _is_shared_object(obj: Any) -> bool:
    """Models are sent to the worker once and then referred to by number."""
    return isinstance(getattr(obj, "model", obj), torch.nn.Module)


class _Pickler:
    """cloudpickle, with already-sent models replaced by their number."""

    def __init__(self, sent: dict[int, tuple[int, Any]]) -> None:
        import cloudpickle

        self.sent = sent

        class Pickler(cloudpickle.Pickler):
            def persistent_id(inner, obj):  # noqa: N805
                entry = sent.get(id(obj))
                return None if entry is None or entry[1] is not obj else entry[0]

        self.cls = Pickler

    def dumps(self, obj: Any) -> bytes:
        buffer = io.BytesIO()
        self.cls(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return buffer.getvalue()


class RemoteRunner:
    """A :class:`~labkit.checks.transport.LiveRunner` whose calls run in a worker process."""

    def __init__(
        self,
        process: subprocess.Popen,
        requests: int,
        replies: int,
        on_exit: Callable[[RemoteRunner], None] | None = None,
    ) -> None:
        self.process, self.requests, self.replies = process, requests, replies
        self.on_exit = on_exit
        self.ended: str | None = None  # why the worker is gone
        self._sent: dict[int, tuple[int, Any]] = {}
        self._pickler = _Pickler(self._sent)
        hello = self._receive(deadline=time.monotonic() + 120)
        self.defined: list[str] = list(hello.get("defined", []))
        self.cell_errors: list[str] = list(hello.get("errors", []))

    def function(self, name: str) -> RemoteFunction:
        """The student's top-level function ``name`` (whether or not it exists)."""
        return RemoteFunction(name, name)

    # -- the runner interface used by Checker.call --------------------------------------------
    def call(self, t: Checker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if isinstance(fn, RecordedFunction) and type(fn.handle) is int:
            fn = RemoteFunction(fn.handle, "the function yours returned")
        if not isinstance(fn, RemoteFunction):
            raise CheckFailed(f"Expected a function of your notebook here, got {fn!r}.")
        if self.ended:
            raise CheckFailed(f"Not run: {self.ended}")
        watch = [w.module for w in t._watched]
        for obj in [*args, *kwargs.values(), *watch]:
            self._define(obj)
        timeout = t.timeout if t.timeout is not None else 3600.0
        request = ("call", fn.handle, args, kwargs, watch, timeout)
        started = time.monotonic()
        try:
            self._send(request)
            reply = self._receive(deadline=time.monotonic() + timeout + GRACE_SECONDS)
        except TimeoutError:
            self._end(f"your code was stopped after {timeout:g} s and its process ended.")
            raise StopChecking(
                f"Your function was stopped after {timeout:g} s; a correct one takes well under "
                "a second here. Look for a loop that never ends (or a far too slow one)."
            ) from None
        except (EOFError, BrokenPipeError, OSError, OverflowError, pickle.UnpicklingError) as err:
            why = _why_it_ended(self.process, err)
            self._end(f"your code ended its grading process earlier ({why}).")
            raise CheckFailed(
                f"While this call ran, your code ended its grading process ({why}). Calls to "
                "os._exit or sys.exit, crashes and running out of memory end it."
            ) from None
        finally:
            t.slowest_call = max(t.slowest_call, time.monotonic() - started)
        kind = reply.get("kind")
        if kind == "not attempted":
            raise NotAttempted(str(reply.get("message", "")))
        if kind == "timeout":
            raise StopChecking(str(reply.get("message", "")))
        if kind != "value":
            raise CheckFailed(str(reply.get("message", "Your function failed.")))
        self._bring_back(args, reply.get("changed", {}))
        return restore(reply.get("value"))

    # -- plumbing -----------------------------------------------------------------------------
    def _define(self, obj: Any) -> None:
        if not _is_shared_object(obj) or id(obj) in self._sent:
            return
        if obj is not getattr(obj, "model", obj):  # a LabModel: its network first, so that
            self._define(obj.model)  # the worker's LabModel and watched network are one object
        number = len(self._sent)
        self._send(("define", number, obj))
        self._sent[id(obj)] = (number, obj)  # keep a reference: ids are never reused

    def _send(self, message: tuple) -> None:
        _write_frame(self.requests, self._pickler.dumps(message))

    def _receive(self, deadline: float) -> dict:
        payload = _read_frame(self.replies, deadline, MAX_REPLY_BYTES)
        reply = torch.load(io.BytesIO(payload), weights_only=True)
        if not isinstance(reply, dict):
            raise pickle.UnpicklingError("a reply that is not a dict")
        return reply

    @staticmethod
    def _bring_back(args: tuple, changed: Any) -> None:
        """A module argument the student's function changed in place (e.g. randomised
        weights) gets the same new state here, so the check sees what the notebook would."""
        if not isinstance(changed, dict):
            return
        for index, state in changed.items():
            if isinstance(index, int) and 0 <= index < len(args) and isinstance(state, dict):
                module = getattr(args[index], "model", args[index])
                if isinstance(module, torch.nn.Module):
                    module.load_state_dict(state, strict=False)

    def _end(self, why: str) -> None:
        self.ended = why
        self.close()
        if self.on_exit is not None:
            self.on_exit(self)

    def close(self) -> None:
        """Stop the worker (politely, then for good)."""
        if self.process.poll() is None:
            try:
                _write_frame(self.requests, pickle.dumps(("stop",)))
                self.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.process.pid, 9)  # the worker and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)
            except OSError:
                pass
        self.requests = self.replies = -1


def _why_it_ended(process: subprocess.Popen, err: BaseException) -> str:
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return f"no answer: {type(err).__name__}"
    if code < 0:
        import signal

        name = signal.Signals(-code).name
        return f"killed by {name}" + (", probably out of memory" if name == "SIGKILL" else "")
    return f"exit code {code}"


def start_worker(
    cells: Sequence[str],
    *,
    python: str = sys.executable,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    stdout: Any = subprocess.DEVNULL,
    on_exit: Callable[[RemoteRunner], None] | None = None,
) -> RemoteRunner:
    """Start a worker that runs each of ``cells`` (Python source), then serves calls.

    A cell that fails (syntax error, exception) is reported in ``runner.cell_errors`` and the
    others still run. ``preexec_fn`` can set resource limits or drop privileges.
    """
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    code = (
        "import sys; from labkit.checks.remote import _worker_main; "
        f"_worker_main({to_worker_r}, {from_worker_w})"
    )
    process = subprocess.Popen(
        [python, "-c", code],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not subprocess.DEVNULL else subprocess.DEVNULL,
        pass_fds=(to_worker_r, from_worker_w),
        cwd=cwd,
        env=env,
        preexec_fn=preexec_fn,
        start_new_session=True,  # its own process group: children it starts end with it
    )
    os.close(to_worker_r)
    os.close(from_worker_w)
    assert process.stdin is not None
    process.stdin.write(pickle.dumps(list(cells)))
    process.stdin.close()
    try:
        return RemoteRunner(process, to_worker_w, from_worker_r, on_exit)
    except (EOFError, TimeoutError, OSError, pickle.UnpicklingError) as err:
        why = _why_it_ended(process, err)
        if process.poll() is None:
            process.kill()
        raise RuntimeError(f"The worker did not start ({why}).") from None


# ----- the worker's side -------------------------------------------------------------------------
def _worker_main(requests: int, replies: int) -> None:
    """Entry point of the worker process: run the cells, say hello, serve calls."""
    cells = pickle.loads(sys.stdin.buffer.read())
    sys.stdin = open(os.devnull)  # noqa: SIM115  (the student's code reads nothing)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    errors = []
    for number, source in enumerate(cells):
        try:
            exec(compile(source, f"<cell {number}>", "exec"), namespace)  # noqa: S102
        except BaseException as err:  # a broken cell costs its own definitions only
            errors.append(f"cell {number}: {type(err).__name__}: {err}")
    defined = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("_"))
    serve(namespace, requests, replies, hello={"defined": defined, "errors": errors})


def serve(namespace: dict, requests: int, replies: int, hello: dict | None = None) -> None:
    """Answer call requests from the grader until it says stop (runs in the worker)."""
    objects: dict[int, Any] = {}
    returned: dict[int, Callable] = {}

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, number):
            return objects[number]

    def reply(message: dict) -> None:
        buffer = io.BytesIO()
        torch.save(message, buffer)
        _write_frame(replies, buffer.getvalue())

    reply(hello or {})
    while True:
        try:
            message = Unpickler(io.BytesIO(_read_frame(requests))).load()
        except EOFError:
            return
        if message[0] == "stop":
            return
        if message[0] == "define":
            objects[message[1]] = message[2]
            continue
        _, handle, args, kwargs, watch, timeout = message
        reply(_serve_call(namespace, returned, handle, args, kwargs, watch, timeout))


def _serve_call(namespace, returned, handle, args, kwargs, watch, timeout) -> dict:
    fn = returned.get(handle) if type(handle) is int else namespace.get(handle)
    if fn is None:
        return {
            "kind": "failed",
            "message": f"Your notebook does not define `{handle}` (was it renamed or deleted, or "
            "does its cell have an error?). Define it with exactly this name.",
        }
    watched = [WatchedModel(getattr(m, "model", m), "the model") for m in watch]
    watched_ids = {id(w.module) for w in watched}
    before = {
        i: {k: v.detach().clone() for k, v in getattr(a, "model", a).state_dict().items()}
        for i, a in enumerate(args)
        if _is_shared_object(a) and id(getattr(a, "model", a)) not in watched_ids
    }
    try:
        value = guarded_call(fn, tuple(args), dict(kwargs), timeout=timeout, watched=watched)
    except NotAttempted as err:
        return {"kind": "not attempted", "message": str(err)}
    except StopChecking as err:
        return {"kind": "timeout", "message": str(err)}
    except CheckFailed as err:
        return {"kind": "failed", "message": str(err)}
    changed = {}
    for i, state in before.items():
        now = getattr(args[i], "model", args[i]).state_dict()
        if any(k not in now or not torch.equal(now[k], v) for k, v in state.items()):
            changed[i] = {k: transportable(v) for k, v in now.items()}
    if callable(value) and not isinstance(value, torch.Tensor):
        number = len(returned) + 1
        returned[number] = value
        return {"kind": "value", "value": {"__function__": number}, "changed": changed}
    return {"kind": "value", "value": transportable(value), "changed": changed}
