"""The worker processes that run student code, and what keeps them contained.

Three kinds of process take part:

* the **grader** (``labkit grade``) never runs student code. For each job slot it starts
* a **zygote** (``python -m labkit.grading.sandbox``): it imports torch, labkit and the lab's
  libraries once and warms the checks' tiny models, then, for each submission, forks
* a **worker**, which runs one submission (see ``labkit.grading.worker``). Forking from a warm
  zygote costs milliseconds instead of the ~15 s that importing torch and transformers takes.

Each worker gets, before any student code runs:

* its own session and process group (the grader kills the whole group on a time limit);
* a fresh temporary working directory, which is also its HOME and TMPDIR, with stdout and
  stderr going to a capped file there; stdin is /dev/null;
* resource limits: address space (``Limits.memory_mb``), CPU seconds, the size of any file it
  writes (``Limits.output_mb``), no core dumps;
* when the grader runs as root: a private mount namespace in which the output folder, the
  solutions and the submissions are covered by empty read-only folders, no network, and an
  unprivileged user (``nobody``, or 65534 - slot for parallel slots) with no way to regain
  privileges. As an ordinary user the same hiding uses a user namespace where the kernel allows
  one; otherwise the worker runs as the grader's own user (see docs/instructors.md for what
  that leaves open).

The grader also enforces a wall-clock limit per exercise and per submission from outside: it
reads the worker's progress file and kills the process group when a limit is passed. After a
crash or a kill, a fresh worker goes on with the next exercise, so one hostile exercise costs
only itself.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.grading.config import GradingError, Limits

NOBODY = 65534
READY_SECONDS = 600.0  # importing torch on a busy 2-core machine can take minutes
MAX_PROGRESS_BYTES = 4096

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REC, _MS_PRIVATE = 1 << 14, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38


# ----- reading what a worker wrote (it may be hostile) --------------------------------------------
def read_capped(path: Path, max_bytes: int) -> bytes | None:
    """A regular file's bytes, or None if it is missing, not a plain file, or too large.

    Never follows a symlink and never blocks on a FIFO the worker put in its place.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) <= max_bytes else None
    finally:
        os.close(fd)


def read_json(path: Path, max_bytes: int = 1 << 20) -> Any:
    data = read_capped(path, max_bytes)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


# ----- isolation (runs in the worker, before student code) ----------------------------------------
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def isolate(hide: list[str], uid: int | None) -> dict:
    """Namespaces, hidden folders and an unprivileged user, as far as this system allows.

    Returns what was achieved: {"namespaces": bool, "hidden": [...], "uid": int}.
    """
    libc = _libc()
    achieved: dict[str, Any] = {"namespaces": False, "hidden": [], "uid": os.geteuid()}
    root = os.geteuid() == 0
    if root:
        spaces = libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET) == 0
        spaces = spaces or libc.unshare(_CLONE_NEWNS) == 0
    else:
        real_uid, real_gid = os.getuid(), os.getgid()
        spaces = libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET) == 0
        if spaces:
            try:
                Path("/proc/self/setgroups").write_text("deny")
                Path("/proc/self/uid_map").write_text(f"{real_uid} {real_uid} 1")
                Path("/proc/self/gid_map").write_text(f"{real_gid} {real_gid} 1")
            except OSError:
                spaces = False
    # Mounts must stay private to this namespace before anything is mounted.
    if spaces and libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0:
        achieved["namespaces"] = True
        flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        for path in hide:
            if os.path.isdir(path):
                target = os.fsencode(path)
                if libc.mount(b"tmpfs", target, b"tmpfs", flags, b"size=4k,mode=0555") == 0:
                    achieved["hidden"].append(path)
    if root and uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        achieved["uid"] = os.geteuid()
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return achieved


def apply_limits(limits: dict, dropped: bool) -> None:
    memory = int(limits["memory_mb"]) * 2**20
    cpu = int(limits["seconds_per_submission"]) + 5
    output = int(limits["output_mb"]) * 2**20
    for which, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, output),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
    if dropped:  # processes (and threads) of the sandbox user only
        resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not the process


# ----- the zygote ---------------------------------------------------------------------------------
def _serve() -> None:
    """The zygote's loop: JSON lines in on stdin, JSON lines out on the original stdout."""
    channel_in = os.fdopen(os.dup(0), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)

    def send(message: dict) -> None:
        channel_out.write(json.dumps(message).encode() + b"\n")

    def receive() -> dict | None:
        line = channel_in.readline()
        return json.loads(line) if line else None

    init = receive()
    if init is None:
        return
    import torch

    torch.set_num_threads(1)
    for name in init.get("preload", []):
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 -- a library the notebook imports may be missing
            pass
    _warm(init["checks"])
    import threading

    send(
        {
            "ready": True,
            "probe": _probe(init.get("uid")),
            "memory_mb": _resident_mb(),
            "threads": threading.active_count(),
        }
    )
    protocol = (channel_in.fileno(), channel_out.fileno())
    while (message := receive()) is not None:
        pid = os.fork()
        if pid == 0:
            _worker(message, protocol)  # never returns
        send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        send({"exit": os.waitstatus_to_exitcode(status)})


def _warm(checks_module: str) -> None:
    """Run every check once against a stub, so its tiny models and imports are ready."""
    from labkit.checks.core import run_check

    def stub(*args, **kwargs):
        raise NotImplementedError

    for check in importlib.import_module(checks_module).EXERCISES.values():
        run_check(check.body, check.check_name, check.points, stub, timeout=None)


def _probe(uid: int | None) -> dict:
    """What isolation a worker gets here (tried in a throwaway child)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            report = isolate([], uid)
        except BaseException as err:  # noqa: BLE001
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


def _resident_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) // 1024
    return 0


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (hiding it would hide the job too)."""
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == (
        os.path.abspath(folder)
    )


def _worker(message: dict, protocol: tuple[int, int]) -> None:
    """In the forked child: contain it, then run the job. Never returns."""
    code = 70
    try:
        os.setsid()
        for fd in protocol:
            os.close(fd)
        folder = message["dir"]
        output = os.open(
            os.path.join(folder, "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        uid = message.get("uid")
        hide = [p for p in message.get("hide", []) if not _inside(folder, p)]
        achieved = isolate(hide, uid)
        apply_limits(message["limits"], dropped=achieved["uid"] != 0 and uid is not None)
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(
            HOME=folder,
            TMPDIR=folder,
            PATH="/usr/local/bin:/usr/bin:/bin",
            LANG="C.UTF-8",
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        tempfile.tempdir = None
        from labkit.grading.worker import work

        work(Path(folder))
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


# ----- the grader's side --------------------------------------------------------------------------
@dataclass
class Isolation:
    """What the workers of this run get; shown to the instructor once."""

    uid: int
    namespaces: bool
    error: str = ""

    def describe(self) -> str:
        who = "the grader's own user" if self.uid == os.geteuid() else f"uid {self.uid}"
        if self.error:
            return f"workers run as {who}; isolation probe failed: {self.error}"
        hidden = (
            "output, solutions and submissions hidden in a private mount namespace, no network"
            if self.namespaces
            else "no mount namespace (output folder protected by permissions only)"
        )
        return f"workers run as {who}; {hidden}"


@dataclass
class RunReport:
    """How a submission's run went, as seen from outside the worker."""

    # exercise index -> (variant index, why it stopped)
    stops: dict[int, tuple[int, str]] = field(default_factory=dict)
    definitions_failed: str = ""  # the worker died while defining the notebook's functions
    not_run: str = ""  # why the remaining exercises were not run (time used up)
    not_run_from: int = -1
    seconds: float = 0.0


class Sandbox:
    """One job slot: a zygote process and the workers it forks, one submission at a time."""

    def __init__(
        self,
        checks_module: str,
        limits: Limits,
        *,
        slot: int = 0,
        preload: list[str] | None = None,
        hide: list[Path] | None = None,
        base: Path | None = None,
        python_path: list[str] | None = None,
    ) -> None:
        self.checks_module = checks_module
        self.limits = limits
        self.slot = slot
        self.preload = list(preload or [])
        self.hide = [str(Path(p).resolve()) for p in hide or []]
        # Where the zygote finds labkit and the checks: this labkit first, then the grader's path.
        here = str(Path(__file__).resolve().parents[2])
        paths = [here, *(str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir())]
        self.python_path = list(dict.fromkeys(python_path or paths))
        self.root = os.geteuid() == 0
        self.uid = NOBODY - slot if self.root else None
        self.base = Path(base or tempfile.mkdtemp(prefix="labkit-sandbox-"))
        self._own_base = base is None
        self.process: subprocess.Popen | None = None
        self.isolation: Isolation | None = None
        self._buffer = b""
        self._worker_pid: int | None = None

    # -- the zygote ----------------------------------------------------------------------------
    def start(self) -> Isolation:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)  # workers can reach their own folder, not list the others
        home = self.base / "home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(self.python_path),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "MPLBACKEND": "Agg",
        }
        with open(self.base / "zygote.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labkit.grading.sandbox"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=str(home),
                env=env,
                start_new_session=True,
            )
        self._send({"checks": self.checks_module, "preload": self.preload, "uid": self.uid})
        ready = self._receive(READY_SECONDS)
        if not ready or not ready.get("ready"):
            log = (self.base / "zygote.log").read_text(errors="replace")[-3000:]
            self.close()
            raise GradingError(f"The grading worker did not start:\n{log}")
        probe = ready.get("probe", {})
        if int(ready.get("memory_mb", 0)) + 512 > self.limits.memory_mb:
            self.close()
            raise GradingError(
                f"The memory limit ({self.limits.memory_mb} MB) leaves no room: a worker "
                f"already maps {ready['memory_mb']} MB (torch and the lab's libraries). Raise "
                "it (--memory-mb)."
            )
        self.isolation = Isolation(
            uid=int(probe.get("uid", os.geteuid())),
            namespaces=bool(probe.get("namespaces")),
            error=str(probe.get("error", "")),
        )
        return self.isolation

    def close(self) -> None:
        if self._worker_pid is not None:
            self._kill_group(self._worker_pid)
        if self.process is not None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._kill_group(self.process.pid)
                self.process.wait()
            self.process = None
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def _send(self, message: dict) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def _receive(self, timeout: float) -> dict | None:
        """The zygote's next message, or None after ``timeout`` seconds or if it died."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    @staticmethod
    def _kill_group(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # -- one submission ------------------------------------------------------------------------
    def new_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.base))
        if self.uid is not None:
            os.chown(folder, self.uid, self.uid)
        os.chmod(folder, 0o700)
        return folder

    def run(self, job: dict, folder: Path) -> RunReport:
        """Run ``job`` in ``folder`` (from :meth:`new_folder`) until every exercise is done,
        restarting a fresh worker after a crash or a time limit."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        report = RunReport()
        started = time.monotonic()
        deadline = started + self.limits.seconds_per_submission
        n_exercises = len(job["exercises"])
        start = 0
        while start < n_exercises:
            (folder / "progress.json").unlink(missing_ok=True)
            job_file = folder / "job.json"
            job_file.write_text(
                json.dumps({**job, "start": start, "trim_output": True}), encoding="utf-8"
            )
            if self.uid is not None:
                os.chown(job_file, self.uid, self.uid)
            killed = self._run_once(folder, deadline)
            progress = read_json(folder / "progress.json", MAX_PROGRESS_BYTES) or {}
            state = progress.get("state")
            if state == "done" and not killed:
                break
            reason = killed or self._describe_exit()
            if state in (None, "defining"):
                report.definitions_failed = reason
                break
            index = progress.get("exercise")
            if not isinstance(index, int) or not start <= index < n_exercises:
                report.definitions_failed = reason
                break
            if state == "running":
                variant = progress.get("variant", 0)
                report.stops[index] = (variant if isinstance(variant, int) else 0, reason)
            start = index + 1
            if time.monotonic() >= deadline:
                report.not_run = (
                    f"Not run: the submission used up its {self.limits.seconds_per_submission:g} "
                    "s for all exercises."
                )
                report.not_run_from = start
                break
        report.seconds = time.monotonic() - started
        return report

    def _run_once(self, folder: Path, deadline: float) -> str:
        """Fork one worker and watch it; returns why it was killed ('' if it was not)."""
        message = {
            "dir": str(folder),
            "uid": self.uid,
            "hide": self.hide,
            "limits": self.limits.__dict__,
        }
        self._last_exit: int | None = None
        try:
            self._send(message)
            reply = self._receive(60)
        except OSError:
            reply = None
        if not reply or "pid" not in reply:
            self._restart()
            return "The grading worker failed to start for this submission; try grading it again."
        pid = self._worker_pid = int(reply["pid"])
        killed = ""
        per_exercise = self.limits.seconds_per_exercise
        while True:
            reply = self._receive(0.05)
            if reply is not None and "exit" in reply:
                self._last_exit = int(reply["exit"])
                self._worker_pid = None
                return killed
            if self.process is None or self.process.poll() is not None:
                self._kill_group(pid)
                self._restart()
                return killed or (
                    "Your code ended the grading process itself (it killed its parent process)."
                )
            if killed:
                continue
            now = time.monotonic()
            progress = read_json(folder / "progress.json", MAX_PROGRESS_BYTES) or {}
            since = progress.get("since")
            wall = time.time()
            if isinstance(since, (int, float)) and wall - since > per_exercise:
                what = (
                    "defining your notebook's functions"
                    if progress.get("state") == ("defining")
                    else "this exercise (all its tests together)"
                )
                killed = (
                    f"Stopped after {per_exercise:g} s, the time limit for {what}. Look for a "
                    "loop that never ends, or one that is far too slow."
                )
            elif now > deadline:
                killed = (
                    f"Stopped: the submission used up its {self.limits.seconds_per_submission:g} s "
                    "for all exercises."
                )
            if killed:
                self._kill_group(pid)

    def _describe_exit(self) -> str:
        code = getattr(self, "_last_exit", None)
        if code is None:
            return "The grading process stopped unexpectedly."
        if code < 0:
            sig = -code
            if sig == signal.SIGKILL:
                return (
                    "The grading process was killed (signal 9), most likely because your code "
                    f"used more memory than the {self.limits.memory_mb} MB allowed."
                )
            if sig == signal.SIGXCPU:
                return "Your code used up the CPU time allowed for the whole submission."
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            return f"The grading process crashed ({name}) while running your code."
        if code == 70:
            return (
                "The grading process failed while running your code (it may have replaced "
                "parts of Python, torch or labkit that the grader needs)."
            )
        return (
            f"Your code ended the grading process (exit status {code}), for example with "
            "os._exit() or by killing its own process. An exercise must return, never end "
            "Python."
        )

    def _restart(self) -> None:
        if self.process is not None:
            self._kill_group(self.process.pid)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.process = None
        self._buffer = b""
        self.start()


if __name__ == "__main__":
    _serve()
