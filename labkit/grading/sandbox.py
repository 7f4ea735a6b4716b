"""The grader's side of the workers that run student code: start them, bound them, end them.

One :class:`Sandbox` per job slot. It starts a **zygote** (``labkit.worker.zygote``): a process
that imports torch once, with only the *public* labkit on its path (the student release's
package, copied into the sandbox's own folder) and an empty environment. For each submission
the sandbox asks the zygote for a fresh **worker** and gets back that worker's own channel,
which the grader talks to directly (``labkit.grading.remote``).

What holds a worker (see ``labkit.worker.contain`` for the worker's side):

* **control groups** made here for the slot: memory and the number of processes count for all
  of a submission's processes together (cgroup v2 where the kernel delegates it, else cgroup v1;
  :class:`ControlGroups` says which). Without either, the grader adds up the memory of the
  slot's uid itself and ends the worker past the limit;
* **namespaces** where the system allows them: the worker sees its own processes only, no
  network, and a file system without the repository, the solutions, the class archive, other
  submissions or the grader's output;
* **its own uid** (when the grader runs as root): one per slot and grading process
  (:func:`slot_uid`), so no worker can signal another's, and every process of that uid is
  ended before the slot's next worker starts;
* **limits from outside**: the grader's own clock decides time limits, and ending a worker ends
  its process group, its control groups and its uid's processes, so nothing outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.grading.config import GradingError, Limits

READY_SECONDS = 600.0  # importing torch on a busy 2-core machine can take minutes
UID_BASE = 200_000  # workers run as uids above this when the grader is root (slot_uid)
SLOTS_PER_RUN = 16
# LABKIT_SANDBOX: "no-namespaces" (a system that forbids namespaces), or "container": neither
# namespaces nor control groups, as in Gradescope's Docker container (tests use both).
SANDBOX_ENV = "LABKIT_SANDBOX"


# ----- control groups -----------------------------------------------------------------------------
def _own_cgroup(controller: str) -> str:
    """This process's cgroup path for ``controller`` (v1), or for the unified hierarchy ('')."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if (controller and controller in names.split(",")) or (not controller and not names):
                return path
    except OSError:
        pass
    return "/"


@dataclass
class ControlGroups:
    """One slot's control groups: memory and process count for everything a worker starts."""

    kind: str  # "v2", "v1" or "none"
    folders: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, limits: Limits) -> ControlGroups:
        memory = str(limits.memory_mb * 2**20)
        processes = str(limits.processes)
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").exists():
            parent = v2 / _own_cgroup("").lstrip("/")
            try:
                wanted = {"memory", "pids"}
                if wanted <= set((parent / "cgroup.controllers").read_text().split()):
                    folder = parent / name
                    folder.mkdir(exist_ok=True)
                    (folder / "memory.max").write_text(memory)
                    (folder / "memory.swap.max").write_text("0")
                    (folder / "pids.max").write_text(processes)
                    return cls("v2", [folder])
            except OSError:
                pass
        folders = []
        try:
            for controller, settings in (
                (
                    "memory",
                    [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)],
                ),
                ("pids", [("pids.max", processes)]),
            ):
                root = v2 / controller
                parent = root / _own_cgroup(controller).lstrip("/")
                if not (parent / "cgroup.procs").exists():
                    parent = root
                folder = parent / name
                folder.mkdir(exist_ok=True)
                folders.append(folder)
                for file, value in settings:
                    if (folder / file).exists():
                        (folder / file).write_text(value)
            return cls("v1", folders)
        except OSError:
            for folder in folders:
                try:
                    folder.rmdir()
                except OSError:
                    pass
            return cls("none")

    @property
    def procs_files(self) -> list[str]:
        return [str(f / "cgroup.procs") for f in self.folders]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            try:
                found |= {int(p) for p in Path(path).read_text().split()}
            except (OSError, ValueError):
                pass
        return found

    def kill_all(self) -> None:
        """End every process in the groups (and wait until they are gone, at most 5 s)."""
        if self.kind == "v2" and (self.folders[0] / "cgroup.kill").exists():
            try:
                (self.folders[0] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def ran_out_of_memory(self) -> bool:
        for folder in self.folders:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    for line in (folder / name).read_text().splitlines():
                        field_, _, value = line.partition(" ")
                        if field_ == key and int(value) > 0:
                            return True
                except (OSError, ValueError):
                    pass
            try:
                if int((folder / "memory.failcnt").read_text()) > 0:
                    return True
            except (OSError, ValueError):
                pass
        return False

    def reset_counters(self) -> None:
        for folder in self.folders:
            try:
                (folder / "memory.failcnt").write_text("0")
            except OSError:
                pass

    def remove(self) -> None:
        self.kill_all()
        for folder in self.folders:
            try:
                folder.rmdir()
            except OSError:
                pass


# ----- processes of a uid -------------------------------------------------------------------------
def slot_uid(slot: int) -> int:
    """The uid of a job slot's workers: its own for each slot of each grading process, so two
    runs on one machine (or two test workers) never share one."""
    return UID_BASE + (os.getpid() % 100_000) * SLOTS_PER_RUN + slot % SLOTS_PER_RUN


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def memory_of(uid: int) -> int:
    """Memory, in bytes, of every process of ``uid`` together: each process's proportional set
    size (pages shared after a fork count once in all), its resident size where the kernel has
    no smaps_rollup."""
    total = 0
    for pid in processes_of(uid):
        for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
            try:
                text = Path(f"/proc/{pid}/{name}").read_text()
            except OSError:
                continue
            line = next((x for x in text.splitlines() if x.startswith(key)), None)
            if line is not None:
                total += int(line.split()[1]) * 1024
                break
    return total


def end_uid(uid: int, seconds: float = 5.0) -> None:
    """End every process of ``uid`` (a child switches to it and signals all it may: -1)."""
    deadline = time.monotonic() + seconds
    while processes_of(uid) and time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.01)


# ----- what a worker may see ----------------------------------------------------------------------
SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/etc", "/sys")


def readonly_paths(public: Path) -> list[str]:
    """What a worker's file system holds (read-only): the system's libraries, the Python
    installation, the folders Python imports from, and the public labkit."""
    paths = {p for p in SYSTEM_PATHS if os.path.exists(p)}
    paths |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), str(public)}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and "site-packages" in entry:
            paths.add(os.path.realpath(entry))
    # Nested paths are covered by their parents' binds.
    ordered = sorted(paths, key=len)
    kept: list[str] = []
    for path in ordered:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def copy_public_labkit(dest: Path) -> Path:
    """The student release's labkit (everything but the instructor's ``grading``), copied to
    ``dest/labkit``; returns ``dest``."""
    from labkit.release import copy_public_package

    copy_public_package(dest)
    return dest


def exposed(path: Path) -> bool:
    """Whether any user may read ``path`` (it and every folder above it let others in)."""
    path = Path(path).resolve()
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & stat.S_IROTH:
        return False
    for parent in path.parents:
        try:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


# ----- the sandbox --------------------------------------------------------------------------------
@dataclass
class Isolation:
    """What the workers of this run get; shown to the instructor once."""

    uid: int | None
    namespaces: bool
    cgroups: str
    error: str = ""

    def describe(self) -> str:
        who = "the grader's own user" if self.uid in (None, os.geteuid()) else f"uid {self.uid}+"
        if self.error:
            return f"workers run as {who}; isolation probe failed: {self.error}"
        seen = (
            "own PID, mount and network namespaces (no repository, no other files, no network)"
            if self.namespaces
            else "no namespaces (files hidden by permissions only)"
        )
        groups = {
            "v2": "cgroup v2 limits",
            "v1": "cgroup v1 limits",
            "none": "per-uid limits and the grader's memory watch",
        }[self.cgroups]
        return f"workers run as {who}; {seen}; {groups}"


@dataclass
class Worker:
    """One contained worker, serving one submission."""

    pid: int  # the zygote's child (its process group is the worker's)
    channel: int  # the grader's end of the worker's channel
    sandbox: Sandbox
    ended: str = ""  # why it is gone, once it is
    exit_code: int | None = None

    def end(self, why: str = "") -> None:
        """End the worker and everything it started (idempotent)."""
        if not self.ended:
            self.ended = why or "ended"
        self.sandbox._end_worker(self)

    def memory_exceeded(self) -> bool:
        sandbox = self.sandbox
        if sandbox.groups.kind != "none" or sandbox.uid is None:
            return False
        return memory_of(sandbox.uid) > sandbox.limits.memory_mb * 2**20

    def ran_out_of_memory(self) -> bool:
        return self.sandbox.groups.ran_out_of_memory()


class Sandbox:
    """One job slot: a zygote, its control groups and uid, and one worker at a time."""

    def __init__(
        self,
        limits: Limits,
        *,
        slot: int = 0,
        preload: list[str] | None = None,
        base: Path | None = None,
        public: Path | None = None,
    ) -> None:
        self.limits = limits
        self.slot = slot
        self.preload = list(preload or [])
        self.root = os.geteuid() == 0
        self.uid = slot_uid(slot) if self.root else None
        mode = os.environ.get(SANDBOX_ENV, "")
        self.namespaces = mode not in ("no-namespaces", "container")
        self.cgroups = mode != "container"
        self.base = Path(base or tempfile.mkdtemp(prefix="labkit-sandbox-"))
        self._own_base = base is None
        self.public = public
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.isolation: Isolation | None = None
        self.groups = ControlGroups("none")
        self._buffer = bytearray()
        self.worker: Worker | None = None

    # -- the zygote ------------------------------------------------------------------------------
    def start(self) -> Isolation:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)  # workers can reach their own folder, not list the others
        if self.public is None:
            self.public = copy_public_labkit(self.base / "public")
        (self.base / "root").mkdir(exist_ok=True)
        (self.base / "jobs").mkdir(exist_ok=True)
        os.chmod(self.base / "jobs", 0o711)
        self.groups = (
            ControlGroups.create(f"labkit-{os.getpid()}-{self.slot}", self.limits)
            if self.root and self.cgroups
            else ControlGroups("none")
        )
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.public),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "MPLBACKEND": "Agg",
        }
        ours, theirs = socket.socketpair()
        env["LABKIT_ZYGOTE_FD"] = str(theirs.fileno())
        with open(self.base / "zygote.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labkit.worker.zygote"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.base / "root"),
                env=env,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        theirs.close()
        self.control = ours
        probe_job = self._new_job()
        self._send({"preload": self.preload, "probe": self._settings(probe_job)})
        ready = self._receive(READY_SECONDS)
        shutil.rmtree(probe_job, ignore_errors=True)
        if not ready or not ready.get("ready"):
            log = (self.base / "zygote.log").read_text(errors="replace")[-3000:]
            self.close()
            raise GradingError(f"The grading worker did not start:\n{log}")
        probe = ready.get("probe", {})
        if self.uid is not None:
            end_uid(self.uid)
        self.groups.kill_all()
        self.isolation = Isolation(
            uid=probe.get("uid", os.geteuid()),
            namespaces=bool(probe.get("namespaces")),
            cgroups=self.groups.kind,
            error=str(probe.get("error", "")),
        )
        if self.isolation.error:
            self.close()
            raise GradingError(f"Workers cannot be contained here: {self.isolation.error}")
        return self.isolation

    def _settings(self, job: Path) -> dict[str, Any]:
        limits = dict(self.limits.__dict__)
        return {
            "job": str(job),
            "uid": self.uid,
            "namespaces": self.namespaces,
            "root": str(self.base / "root"),
            "readonly": readonly_paths(Path(str(self.public))),
            "cgroup_procs": self.groups.procs_files,
            "limits": limits,
        }

    def _new_job(self) -> Path:
        job = Path(tempfile.mkdtemp(prefix="job-", dir=self.base / "jobs"))
        if self.uid is not None:
            os.chown(job, self.uid, self.uid)
        os.chmod(job, 0o700)
        return job

    def _send(self, message: dict, fds: list[int] | None = None) -> None:
        assert self.control is not None
        data = json.dumps(message).encode() + b"\n"
        if fds:
            socket.send_fds(self.control, [data], fds)
        else:
            self.control.sendall(data)

    def _receive(self, timeout: float) -> dict | None:
        """The zygote's next message, or None after ``timeout`` seconds or if it died."""
        assert self.control is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.control.settimeout(left)
            try:
                chunk = self.control.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    # -- workers ---------------------------------------------------------------------------------
    def spawn(self) -> Worker:
        """A fresh contained worker (the previous one, if any, is ended first)."""
        if self.worker is not None:
            self.worker.end()
        if self.process is None or self.process.poll() is not None:
            self._restart()
        ours, theirs = socket.socketpair()
        job = self._new_job()
        self.groups.reset_counters()
        try:
            self._send(self._settings(job), [theirs.fileno()])
            reply = self._receive(60)
        except OSError:
            reply = None
        theirs.close()
        if not reply or "pid" not in reply:
            ours.close()
            shutil.rmtree(job, ignore_errors=True)
            self._restart()
            raise GradingError("The grading worker failed to start; try grading again.")
        worker = Worker(int(reply["pid"]), ours.detach(), self)
        worker.job = job  # type: ignore[attr-defined]
        self.worker = worker
        return worker

    def _end_worker(self, worker: Worker) -> None:
        if worker.channel >= 0:
            try:
                os.close(worker.channel)
            except OSError:
                pass
            worker.channel = -1
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.groups.kill_all()
        if self.uid is not None:
            end_uid(self.uid)
        if worker.exit_code is None:
            reply = self._receive(10)
            while reply is not None and "exit" not in reply:
                reply = self._receive(10)
            if reply is None:
                self._restart()
            else:
                worker.exit_code = int(reply["exit"])
        if not os.environ.get("LABKIT_KEEP_JOBS"):  # kept only to debug the sandbox itself
            shutil.rmtree(getattr(worker, "job", ""), ignore_errors=True)
        if self.worker is worker:
            self.worker = None

    def _restart(self) -> None:
        self.close(keep_base=True)
        self.start()

    def close(self, keep_base: bool = False) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            self.process = None
        self.groups.remove()
        if self.uid is not None:
            end_uid(self.uid)
        self._buffer = bytearray()
        if self._own_base and not keep_base:
            shutil.rmtree(self.base, ignore_errors=True)
