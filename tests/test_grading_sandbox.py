"""The worker that runs student code, seen from inside and outside: what it can see, what it can
do to others, and that nothing it starts outlives it.

Each test starts a worker from a shared zygote, defines a few cells in it and calls them through
the grader's runner, exactly as grading does. The same tests run in the fallback mode of
containers without namespaces (``LABKIT_SANDBOX=no-namespaces``, Gradescope's case), where what
holds is checked separately.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit.checks.core import Checker
from labkit.checks.results import CheckFailed, StopChecking
from labkit.grading.config import Limits
from labkit.grading.remote import RemoteRunner
from labkit.grading.sandbox import SANDBOX_ENV, Sandbox, processes_of, slot_uid

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(memory_mb=3072, seconds_per_call=4.0, processes=64)
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux"),
    pytest.mark.skipif(os.geteuid() != 0, reason="these tests check the root grader's sandbox"),
]
SECRET = "SECRET-7f3a9c"  # in the grader's environment and a file only the grader may read


@pytest.fixture(scope="module", params=["namespaces", "no-namespaces", "container"])
def sandbox(request, tmp_path_factory):
    secret_dir = tmp_path_factory.mktemp("grader-secrets")
    (secret_dir / "seed.txt").write_text(SECRET)
    os.chmod(secret_dir, 0o700)
    old = os.environ.get(SANDBOX_ENV)
    os.environ[SANDBOX_ENV] = request.param
    os.environ["LABKIT_TEST_SECRET"] = SECRET
    box = Sandbox(LIMITS, slot=7)
    try:
        box.start()
    finally:
        if old is None:
            os.environ.pop(SANDBOX_ENV, None)
        else:
            os.environ[SANDBOX_ENV] = old
    box.secret_dir = secret_dir
    yield box
    box.close()
    os.environ.pop("LABKIT_TEST_SECRET", None)


def run(sandbox: Sandbox, source: str, name: str = "f", *args, timeout: float = 4.0):
    """Define ``source`` in a fresh worker and call ``name(*args)`` once; returns (value or
    the exception, the runner)."""
    runner = RemoteRunner(sandbox.spawn(), [(1, source)], timeout)
    t = Checker("test", runner=runner, timeout=timeout)
    try:
        value = t.call(runner.function(name), *args)
    except (CheckFailed, StopChecking) as err:
        value = err
    return value, runner


def namespaces(sandbox: Sandbox) -> bool:
    return bool(sandbox.isolation and sandbox.isolation.namespaces)


def test_a_worker_runs_as_its_own_user_with_limits(sandbox) -> None:
    value, runner = run(sandbox, "import os, resource\ndef f():\n    return [os.geteuid(), "
                        "resource.getrlimit(resource.RLIMIT_NPROC)[0]]\n")  # fmt: skip
    runner.close()
    assert value == [slot_uid(7), LIMITS.processes]


def test_no_grader_process_nor_its_secrets_are_visible(sandbox) -> None:
    source = """\
import os

def f():
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        for what in ('cmdline', 'environ'):
            try:
                found.append(open(f'/proc/{pid}/{what}', 'rb').read().decode(errors='replace'))
            except OSError:
                pass
    return [len([p for p in os.listdir('/proc') if p.isdigit()]), '\\n'.join(found)]
"""
    (count, seen), runner = run(sandbox, source)
    runner.close()
    assert SECRET not in seen
    if namespaces(sandbox):
        assert count <= 3  # init, the worker, and at most what it started


def test_the_file_system_shows_no_repository_or_grader_file(sandbox) -> None:
    paths = [str(ROOT / "solutions"), str(ROOT / ".git"), str(ROOT / "tests"),
             str(ROOT / "labkit" / "grading"), str(sandbox.secret_dir / "seed.txt")]  # fmt: skip
    source = f"""\
import os

def f():
    out = []
    for path in {paths!r}:
        try:
            with open(path) if os.path.isfile(path) else os.scandir(path) as found:
                out.append(path)
        except OSError:
            pass
    return out
"""
    readable, runner = run(sandbox, source)
    runner.close()
    if namespaces(sandbox):
        assert readable == []
    else:  # without namespaces only what the grader keeps private is out of reach
        assert str(sandbox.secret_dir / "seed.txt") not in readable


def test_labkit_grading_cannot_be_imported(sandbox) -> None:
    source = (
        "def f():\n    try:\n        import labkit.grading.answers\n"
        "        return 'imported'\n    except ImportError:\n        return 'refused'\n"
    )
    value, runner = run(sandbox, source)
    runner.close()
    assert value == "refused"


def test_nothing_outlives_the_worker(sandbox) -> None:
    source = """\
import os, time

def f():
    for _ in range(20):  # a bounded fork bomb: 20 sleepers
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
    if os.fork() == 0:  # a daemon in its own session
        os.setsid()
        if os.fork() == 0:
            time.sleep(300)
        os._exit(0)
    return os.getpid()
"""
    value, runner = run(sandbox, source)
    assert isinstance(value, int)
    assert len(processes_of(sandbox.uid)) >= 20
    runner.close()
    assert processes_of(sandbox.uid) == []
    assert sandbox.groups.pids() == set()


def test_a_daemon_cannot_touch_the_next_worker(sandbox) -> None:
    killer = """\
import os, signal, time

def f():
    if os.fork() == 0:
        os.setsid()
        while True:  # kill everything it may, forever
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(0.01)
    return 1
"""
    value, runner = run(sandbox, killer)
    runner.close()
    value, runner = run(sandbox, "import time\ndef f():\n    time.sleep(0.5)\n    return 42\n")
    runner.close()
    assert value == 42


def test_memory_counts_for_every_process_together(sandbox) -> None:
    source = """\
import os, time

def f():
    for _ in range(3):  # three children of 1.5 GB each: 4.5 GB against a 3 GB limit
        if os.fork() == 0:
            block = bytearray(1536 * 2**20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(30)
            os._exit(0)
    time.sleep(6)
    return 'survived'
"""
    value, runner = run(sandbox, source, timeout=10.0)
    if sandbox.groups.kind == "none":  # the grader's watch: the sum of the uid's processes
        assert isinstance(value, CheckFailed) and "memory" in str(value), value
        runner.close()
        return
    peak = max(_peak(folder) for folder in sandbox.groups.folders)
    runner.close()
    assert peak <= LIMITS.memory_mb * 2**20


def _peak(folder: Path) -> int:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        try:
            return int((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return 0


def test_time_is_kept_on_the_graders_clock(sandbox) -> None:
    source = """\
import signal

def f():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # no alarm can stop it
    while True:
        open('progress.json', 'w').write('{"state": "done"}')  # and no file tells a tale
"""
    started = time.monotonic()
    value, runner = run(sandbox, source, timeout=1.0)
    assert isinstance(value, StopChecking)
    assert time.monotonic() - started < 1.0 + 10.0 + 5.0
    assert runner.ended
    runner.close()
    assert processes_of(sandbox.uid) == []


def test_no_network(sandbox) -> None:
    if not namespaces(sandbox):
        pytest.skip("without namespaces the network is the machine's")
    source = """\
import socket

def f():
    try:
        socket.create_connection(('1.1.1.1', 53), timeout=1).close()
        return 'connected'
    except OSError:
        return 'no network'
"""
    value, runner = run(sandbox, source)
    runner.close()
    assert value == "no network"


def test_a_huge_reply_ends_the_worker_not_the_grader(sandbox) -> None:
    source = """\
import os, socket, struct

def f():
    for fd in range(3, 64):  # find the channel and lie about the size of a frame
        try:
            socket.socket(fileno=os.dup(fd)).send(struct.pack('<Q', 10 * 2**30) + b'x' * 100)
        except OSError:
            pass
    return 1
"""
    value, runner = run(sandbox, source)
    runner.close()
    assert isinstance(value, CheckFailed | StopChecking | int)


def test_replies_are_data_never_code(sandbox) -> None:
    source = """\
import torch

class Evil:
    def __reduce__(self):
        return (print, ('pwned',))

def f():
    big = torch.zeros(10**8, dtype=torch.bool)
    return [torch.zeros(2).as_subclass(torch.nn.Parameter), Evil(), big]
"""
    value, runner = run(sandbox, source)
    runner.close()
    from labkit.plaindata import Unsupported

    assert all(isinstance(v, Unsupported) for v in value)


def test_a_student_function_gets_copies_of_models_not_the_graders(sandbox) -> None:
    net = torch.nn.Linear(3, 2)
    before = net.weight.detach().clone()
    source = "import torch\ndef f(net):\n    with torch.no_grad():\n        net.weight.zero_()\n"
    runner = RemoteRunner(sandbox.spawn(), [(1, source)], 4.0)
    t = Checker("test", runner=runner)
    t.call(runner.function("f"), net)  # changed in place in the worker: brought back here
    runner.close()
    assert torch.equal(net.weight, torch.zeros_like(before))


def test_checks_cannot_send_code_to_a_worker(sandbox) -> None:
    import pickle

    runner = RemoteRunner(sandbox.spawn(), [(1, "def f(g):\n    return g(1)\n")], 4.0)
    t = Checker("test", runner=runner)
    secret_reference = lambda x: x + 1  # noqa: E731 -- a check's own code
    with pytest.raises(pickle.PicklingError):
        t.call(runner.function("f"), secret_reference)
    runner.close()


def test_signals_from_a_worker_reach_no_other_process(sandbox) -> None:
    source = f"""\
import os, signal

def f():
    hit = []
    for pid in (1, os.getppid(), {os.getpid()}):
        try:
            os.kill(pid, signal.SIGTERM)
            hit.append(pid)
        except OSError:
            pass
    return hit
"""
    value, runner = run(sandbox, source)
    runner.close()
    assert value == [] or (not namespaces(sandbox) and os.getpid() not in value)
    assert signal.getsignal(signal.SIGTERM) is not None  # we are still here
