"""What a worker does to itself, in the zygote's fresh child, before any student code runs.

In order, as far as the system allows (:func:`contain` returns what it achieved):

1. **A session and a control group.** The child joins the control groups the grader made for
   this submission (memory and process count for *all* its processes together), then starts
   its own session.
2. **Namespaces** (root, or an unprivileged user where the kernel allows user namespaces): new
   PID, mount, network, IPC and UTS namespaces. The child forks an ``init`` (PID 1 of the new
   namespace) that builds a new root file system and then forks the worker. When the worker
   ends, init ends, and the kernel ends every process left in the namespace: nothing outlives
   a submission. In the new namespace the worker sees no process of the grader or of another
   worker, has no network, and its file system holds only what Python needs (the system's
   libraries, the Python installation, site-packages, the public labkit) read-only, plus its
   own empty working folder and ``/tmp``. The course repository, its ``.git``, the solutions, the
   class archive, other submissions and the grader's output do not exist there.
3. **An unprivileged user**: a uid that no other running worker has (when the grader is root),
   no supplementary groups, ``no_new_privs``.
4. **Resource limits**: address space per process, CPU time, the size of any file written, no
   core dumps, and processes per uid.

Without namespaces (a container that forbids them, such as Gradescope's), steps 1, 3 and 4
still hold, and files are hidden by permissions only: see docs/instructors.md.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
from pathlib import Path
from typing import Any

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 1 << 14, 1 << 18
_MNT_DETACH = 2
_PR_SET_NO_NEW_PRIVS, _PR_SET_PDEATHSIG = 38, 1
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "i686": 217, "armv7l": 218}
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
WORK = "/labkit-worker"  # the worker's own folder, where its job folder is bound


class ContainError(RuntimeError):
    """A step of containment failed where it must not."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise ContainError(f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    libc = _libc()
    result = libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(result, f"mount {source} on {target}")


def join_cgroups(procs_files: list[str]) -> list[str]:
    """Move this process into each control group (its ``cgroup.procs`` file)."""
    joined = []
    for path in procs_files:
        try:
            Path(path).write_text(str(os.getpid()))
            joined.append(path)
        except OSError:
            pass
    return joined


def _make_mountpoint(target: Path, is_dir: bool) -> None:
    if is_dir:
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)


def build_root(new_root: str, readonly: list[str], job: str, tmp_mb: int) -> None:
    """In a fresh mount namespace: a tmpfs at ``new_root`` holding read-only binds of
    ``readonly`` (at their own paths), the job folder at WORK, a new /proc, a few devices
    and a small /tmp; then make it the root and forget the old one."""
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    _mount("tmpfs", new_root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
    root = Path(new_root)
    # The worker's own folders first: a read-only path below /tmp (the public labkit) is then
    # bound inside the new /tmp instead of being hidden by it.
    (root / "tmp").mkdir()
    _mount("tmpfs", str(root / "tmp"), "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={tmp_mb}m,mode=1777")
    (root / WORK.lstrip("/")).mkdir()
    _mount(job, str(root / WORK.lstrip("/")), None, _MS_BIND)
    for path in sorted(set(readonly)):
        if not os.path.exists(path) or path == WORK or path.startswith(WORK + "/"):
            continue
        target = root / path.lstrip("/")
        _make_mountpoint(target, os.path.isdir(path))
        _mount(path, str(target), None, _MS_BIND | _MS_REC)
        _mount("none", str(target), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID
               | _MS_NODEV)  # fmt: skip
    for device in DEVICES:
        target = root / device.lstrip("/")
        _make_mountpoint(target, False)
        _mount(device, str(target), None, _MS_BIND)
    (root / "proc").mkdir(exist_ok=True)
    _mount("proc", str(root / "proc"), "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    old = root / ".old-root"
    old.mkdir()
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise ContainError(f"no pivot_root for {platform.machine()}")
    _check(_libc().syscall(number, new_root.encode(), str(old).encode()), "pivot_root")
    os.chdir("/")
    _check(_libc().umount2(b"/.old-root", _MNT_DETACH), "umount the old root")
    os.rmdir("/.old-root")
    _mount("none", "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _unshare(root: bool) -> bool:
    libc = _libc()
    spaces = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    if root:
        return libc.unshare(spaces) == 0
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | spaces) != 0:
        return False
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError:
        return False
    return True


def _init(worker: int) -> None:
    """PID 1 of the worker's namespace: reap every child until the worker ends, then end
    (and with it, every process left in the namespace). Never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 70
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            break
    os._exit(code if code >= 0 else 128 - code)


def drop_privileges(uid: int | None) -> int:
    if os.geteuid() == 0 and uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return os.geteuid()


def apply_limits(limits: dict[str, Any], own_uid: bool) -> None:
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
    if own_uid:  # processes (and threads) of this worker's uid only
        n = int(limits.get("processes", 256))
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not the process


def contain(settings: dict[str, Any], keep_fds: tuple[int, ...]) -> dict[str, Any]:
    """Contain this process (the zygote's fresh child) as ``settings`` ask; returns what was
    achieved, in the worker process only (other processes this makes never return)."""
    achieved: dict[str, Any] = {"cgroups": join_cgroups(list(settings.get("cgroup_procs", [])))}
    os.setsid()
    root = os.geteuid() == 0
    spaces = bool(settings.get("namespaces")) and _unshare(root)
    achieved["namespaces"] = spaces
    job = str(settings["job"])
    if spaces:
        init = os.fork()  # PID 1 of the new PID namespace
        if init:
            _, status = os.waitpid(init, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        build_root(str(settings["root"]), list(settings["readonly"]), job,
                   int(settings["limits"].get("tmp_mb", 64)))  # fmt: skip
        worker = os.fork()
        if worker:
            for fd in keep_fds:
                os.close(fd)
            _init(worker)
        job = WORK
    os.chdir(job)
    output = os.open("output.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    uid = settings.get("uid")
    if root and uid is not None:
        os.chown("output.txt", uid, uid)
        os.chown(".", uid, uid)
    os.closerange(3, 4096) if not keep_fds else _close_except(keep_fds)
    achieved["uid"] = drop_privileges(uid)
    apply_limits(settings["limits"], own_uid=root and uid is not None)
    os.environ.clear()
    os.environ.update(
        HOME=job,
        TMPDIR="/tmp" if spaces else job,
        PATH="/usr/local/bin:/usr/bin:/bin",
        LANG="C.UTF-8",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    import tempfile

    tempfile.tempdir = None
    return achieved


def _close_except(keep: tuple[int, ...]) -> None:
    for fd in range(3, 4096):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
