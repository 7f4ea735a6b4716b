"""Inside a worker: define the notebook, then answer the grader's calls.

The grader sends, over the worker's own channel:

1. the notebook's code cells, ``[(cell number, source), ...]``; the worker runs their
   definitions with the one Run All rule (``labkit.notebooks.run_definitions``) and answers
   with the names it defined and the notes for the student;
2. then messages, pickled by the grader: ``("define", number, obj)`` (a model, sent once and
   referred to by number after), ``("call", name, args, kwargs, watched, timeout)`` and
   ``("stop",)``.

Each call runs the student's function under the same guards as in a notebook (time limit,
inputs and models left alone, gradients left on) and answers with plain data only
(``labkit.plaindata``): what the function returned, or what went wrong. A module the function
changed in place (``randomize_weights_``) comes back as its new state. A function the student's
function returned stays here and is called again by its number.
"""

from __future__ import annotations

import difflib
import io
import pickle
from collections.abc import Callable
from typing import Any

import torch

from labkit import plaindata
from labkit.checks.guards import WatchedModel, describe, guarded_call, time_limit
from labkit.checks.results import CheckFailed, NotAttempted, StopChecking
from labkit.notebooks import run_definitions
from labkit.worker.channel import ChannelClosed, read_frame, send_frame

MAX_REQUEST_BYTES = 1 << 30  # the grader's messages (models included)


def _is_model(obj: Any) -> bool:
    return isinstance(getattr(obj, "model", obj), torch.nn.Module)


def defined_functions(namespace: dict) -> list[str]:
    return sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("_"))


def find_function(namespace: dict, name: str) -> tuple[Callable | None, dict]:
    """The student's function ``name``, or why there is none (with similar names)."""
    if name not in namespace:
        defined = [
            k
            for k, v in namespace.items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", "") == "__main__"
        ]
        similar = difflib.get_close_matches(name, defined, n=3, cutoff=0.6)
        return None, {"kind": "missing", "similar": similar}
    fn = namespace[name]
    if not callable(fn) or isinstance(fn, type):
        return None, {"kind": "not callable", "detail": describe(fn)}
    return fn, {}


def serve(channel: int, statement_seconds: float = 10.0) -> None:
    """The worker's whole life after containment (returns when the grader says stop)."""
    cells = pickle.loads(read_frame(channel, limit=MAX_REQUEST_BYTES))
    cells = [(int(i), str(s)) for i, s in cells]
    found = run_definitions(cells, time_limit=time_limit, statement_seconds=statement_seconds)
    namespace = found.namespace
    reply = {
        "defined": defined_functions(namespace),
        "notes": found.notes,
        "stopped": found.stopped_at is not None,
    }
    send_frame(channel, plaindata.encode(reply))
    objects: dict[int, Any] = {}
    returned: dict[int, Callable] = {}

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, number):
            return objects[number]

    while True:
        try:
            message = Unpickler(io.BytesIO(read_frame(channel, limit=MAX_REQUEST_BYTES))).load()
        except ChannelClosed:
            return
        if message[0] == "stop":
            return
        if message[0] == "define":
            objects[message[1]] = message[2]
            continue
        _, handle, args, kwargs, watch, timeout = message
        answer = _call(namespace, returned, handle, args, kwargs, watch, timeout)
        try:
            data = plaindata.encode(answer, functions=returned)
        except plaindata.PlainDataError as err:
            data = plaindata.encode({"kind": "failed", "message": f"Your function returned {err}."})
        send_frame(channel, data)


def _call(namespace, returned, handle, args, kwargs, watch, timeout) -> dict:
    if type(handle) is int:
        fn, problem = returned.get(handle), {"kind": "failed", "message": "unknown function"}
    else:
        fn, problem = find_function(namespace, handle)
    if fn is None:
        return problem
    watched = [WatchedModel(getattr(m, "model", m), "the model") for m in watch]
    watched_ids = {id(w.module) for w in watched}
    before = {
        i: {k: v.detach().clone() for k, v in getattr(a, "model", a).state_dict().items()}
        for i, a in enumerate(args)
        if _is_model(a) and id(getattr(a, "model", a)) not in watched_ids
    }
    try:
        with torch.random.fork_rng(devices=[]):
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
            changed[i] = {k: v.detach() for k, v in now.items()}
    return {"kind": "value", "value": value, "changed": changed}
