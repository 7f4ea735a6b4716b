"""A warm process that forks one worker per submission (``python -m labkit.worker.zygote``).

Importing torch and transformers takes seconds; forking a process that has already imported
them takes milliseconds. The grader starts one zygote per job slot, with only the public labkit
on its path and an empty environment, and talks to it over a Unix socket (its file descriptor
in ``$LABKIT_ZYGOTE_FD``): JSON lines, and, with each request for a worker, that worker's own
channel as a passed file descriptor. The
zygote never sees a student's notebook (the grader sends it to the worker directly), an
expected value or the seed, so a worker's memory, which starts as a copy of the zygote's, holds
none of them either.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import traceback
from typing import Any

# Model classes the grader may send: imported once here, not in every worker. Also what torch
# and numpy import lazily on the way (unpickling tensors, encoding replies): a worker whose uid
# cannot read the Python environment (a checkout in a 0700 folder, without mount namespaces)
# could not import them later.
PRELOAD = (
    "torch",
    "torch.utils.serialization",
    "numpy.ctypeslib",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.gpt_neox.modeling_gpt_neox",
    "tokenizers",
    "IPython.core.inputtransformer2",
    "labkit",
    "labkit.hooks",
    "labkit.metrics",
    "labkit.tiny",
    "labkit.worker.serve",
    "labkit.worker.contain",
)


def _send(control: socket.socket, message: dict) -> None:
    control.sendall(json.dumps(message).encode() + b"\n")


def _receive(control: socket.socket, buffer: bytearray) -> tuple[dict | None, list[int]]:
    fds: list[int] = []
    while b"\n" not in buffer:
        data, more, _, _ = socket.recv_fds(control, 1 << 16, 4)
        if not data:
            return None, fds
        buffer.extend(data)
        fds += more
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line), fds


def _probe(settings: dict[str, Any]) -> dict[str, Any]:
    """What containment a worker gets here, tried in a throwaway child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        from labkit.worker.contain import contain

        try:
            report = contain(settings, keep_fds=(write,))
            report["ok"] = True
        except BaseException as err:  # noqa: BLE001 -- reported to the grader
            report = {"error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 4096):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except ValueError:
        return {"error": "the probe died"}


def _worker(settings: dict[str, Any], channel: int) -> None:
    """In the forked child: contain it, then serve the grader. Never returns."""
    code = 70
    try:
        from labkit.worker.contain import contain
        from labkit.worker.serve import serve

        contain(settings, keep_fds=(channel,))
        serve(channel, float(settings.get("statement_seconds", 10.0)))
        code = 0
    except BaseException:  # noqa: BLE001 -- reported through output.txt
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def public_imports_only() -> None:
    """Forget every way to import labkit but the public copy on PYTHONPATH: an editable
    install's finder would otherwise lead to the instructor's checkout (labkit.grading)."""
    sys.meta_path[:] = [
        f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
    ]
    sys.path_hooks[:] = [
        h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")
    ]
    sys.path_importer_cache.clear()
    for name in [
        n for n in sys.modules if n == "labkit.grading" or n.startswith("labkit.grading.")
    ]:
        del sys.modules[name]


def main() -> None:
    public_imports_only()
    control = socket.socket(fileno=int(os.environ.pop("LABKIT_ZYGOTE_FD", "3")))
    buffer = bytearray()
    init, _ = _receive(control, buffer)
    if init is None:
        return
    import torch

    torch.set_num_threads(1)
    for name in [*PRELOAD, *init.get("preload", [])]:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 -- a library the notebook imports may be missing
            pass
    probe = _probe(init["probe"]) if init.get("probe") else {}
    _send(control, {"ready": True, "probe": probe})
    while True:
        message, fds = _receive(control, buffer)
        if message is None:
            return
        if not fds:
            _send(control, {"error": "no channel"})
            continue
        pid = os.fork()
        if pid == 0:
            control.close()
            for extra in fds[1:]:
                os.close(extra)
            _worker(message, fds[0])  # never returns
        for fd in fds:
            os.close(fd)
        _send(control, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(control, {"exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
