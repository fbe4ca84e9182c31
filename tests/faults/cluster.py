"""cluster.py: the campaign's hands on the machine -- slurmd killed and restarted, mounts (read-only bind, tmpfs),
the processes of a job (/proc), and the gate that keeps slurmd outages away from Slurm's signals. (Slurm queries
shared with tests/test_slurm_live.py are in tests/helpers.py.)

Every action that changes shared state (the node's daemon, the mount table) is a context manager that puts it back
on the way out, exceptions included: other people's jobs use this Slurm, and nothing may stay mounted. Root only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# slurm/common.sh: state, logs and pid files of the local cluster live here.
SLURM_DIR = Path(os.environ.get("LAUNCHER_SLURM_DIR", "/var/tmp/launcher-slurm"))
SLURMD_PIDFILE = SLURM_DIR / "run" / "slurmd.pid"
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
PAGE = 4096


def run(cmd: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


# ---------------------------------------------------------------- slurmd (the node failure)


def _live_pid(pidfile: Path, comm: str) -> int | None:
    """The daemon's pid if it really runs. PID 1 here does not reap, so a dead daemon lingers as a zombie that
    `kill -0` still finds: read the state from /proc (as slurm/common.sh does), and the name, against pid reuse."""
    try:
        pid = int(pidfile.read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()[0]
    return pid if name == comm and state not in {"Z", "X", "x"} else None


def slurmd_pid() -> int | None:
    return _live_pid(SLURMD_PIDFILE, "slurmd")


def node_state() -> str:
    try:
        out = run(["sinfo", "-h", "-N", "-o", "%T"], timeout_s=10).stdout.split()
    except subprocess.SubprocessError:
        return ""
    return out[0] if out else ""  # "idle*": not responding, so not usable


def start_slurmd(timeout_s: float = 60) -> int:
    """Start slurmd the way slurm/up.sh does (new session, no inherited stdio, output appended to its log), and wait
    until it runs and the controller sees the node usable again."""
    pid = slurmd_pid()
    if pid is None:
        log = SLURM_DIR / "log" / "slurmd.out"
        with open(log, "ab") as out:
            # slurmd daemonizes: the process we start exits at once, so wait() here, or it stays a zombie
            subprocess.run(
                ["setsid", "/usr/sbin/slurmd"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=timeout_s,
                check=False,
            )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = slurmd_pid()
        if pid is not None and node_state() in USABLE_NODE_STATES:
            return pid
        time.sleep(0.2)
    raise RuntimeError(
        f"slurmd did not come back within {timeout_s:.0f}s (pid {pid}, node '{node_state()}'); run `bash slurm/up.sh`"
    )


@contextmanager
def slurmd_down() -> Iterator[int]:
    """SIGKILL slurmd (a crashed node daemon: no clean shutdown), yield its old pid, restart it on the way out."""
    pid = slurmd_pid()
    if pid is None:
        raise RuntimeError(f"slurmd is not running (no live pid in {SLURMD_PIDFILE}); run `bash slurm/up.sh`")
    try:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while slurmd_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        yield pid
    finally:
        start_slurmd()


# ---------------------------------------------------------------- mounts (read-only storage, a full disk)


def is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def unmount(path: Path) -> None:
    """umount, retried while a process briefly holds a file there; lazily as a last resort (it detaches at once, and
    a process that still has a file open there keeps it)."""
    for _ in range(20):
        if not is_mountpoint(path) or run(["umount", str(path)]).returncode == 0:
            return
        time.sleep(0.25)
    proc = run(["umount", "-l", str(path)])
    if proc.returncode != 0 and is_mountpoint(path):
        raise RuntimeError(f"cannot unmount {path}: {proc.stderr.strip()}")


def _mount(*args: str) -> None:
    proc = run(["mount", *args])
    if proc.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {proc.stderr.strip()}")


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` becomes read-only: a bind mount of itself, remounted ro. Files opened before stay writable (they belong
    to the mount under it), as a log that Slurm already holds open would on a real storage server."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
        yield
    finally:
        unmount(path)


@contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[None]:
    """A size-limited file system at `path` (created empty), for the disk-full fault."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path))
    try:
        yield
    finally:
        unmount(path)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@contextmanager
def disk_full(path: Path, slack_pages: int, full_size: int) -> Iterator[int]:
    """Shrink the tmpfs at `path` to what it holds plus `slack_pages`: the next writes fail with ENOSPC. Grows it back
    to `full_size` on the way out. Yields the size it was shrunk to."""
    size = 0
    for _ in range(50):  # usage moves while workers write: a size below it is refused, so read it again and retry
        size = used_bytes(path) + slack_pages * PAGE
        if run(["mount", "-o", f"remount,size={size}", str(path)]).returncode == 0:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"could not shrink the tmpfs at {path}")
    try:
        yield size
    finally:
        _mount("-o", f"remount,size={full_size}", str(path))


# ---------------------------------------------------------------- processes


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def is_worker_process(pid: int) -> bool | None:
    """True for a worker process of its own (`python -m launcher.job.worker`, what a job with DP > 1 starts per GPU
    group), False for any other live process (a worker job's own process, where a DP=1 worker runs), None if gone."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return b"launcher.job.worker" in argv


class SignalGate:
    """Slurm delivers its signals through slurmd: the time limit's and a preemption's USR2, scancel's SIGTERM and
    SIGKILL. While slurmd is down (a node-failure trial) a time-limit USR2 is lost: the job is killed without its
    checkpoint and ends TIMEOUT, which Slurm never requeues (Slurm's limit, not the launcher's); a preemption or a
    scancel lands late, after the unit it was meant to cut has finished (seen), so the trial proves nothing. So a
    trial that relies on such a signal holds the gate shared, from before its submit (waiting later, its workers could
    finish first) until the signal has done its work; a slurmd outage holds it alone. Everything else (first launches,
    requeues, SIGKILL of a job or a worker, storage faults, a touched input, a flipped chunk) runs through the outages
    and must ride them out, as on any node.
    An outage waiting for the gate goes first: new signal windows queue behind it, so outages are never starved.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting_for_signal = 0
        self._outage = False
        self._outages_waiting = 0
        # a preemption trial's preemptor preempts every debug job holding a (fake) GPU: it takes this lock until
        # the preemptor has run, and a worker-kill trial (DP=2 on 2 GPUs) holds it while its jobs run
        self.gpus = threading.Lock()

    @contextmanager
    def signal_window(self, stop: threading.Event) -> Iterator[None]:
        with self._cond:
            while (self._outage or self._outages_waiting) and not stop.is_set():
                self._cond.wait(0.5)
            self._waiting_for_signal += 1
        try:
            yield
        finally:
            with self._cond:
                self._waiting_for_signal -= 1
                self._cond.notify_all()

    @contextmanager
    def outage(self, stop: threading.Event) -> Iterator[None]:
        with self._cond:
            self._outages_waiting += 1
            try:
                while (self._outage or self._waiting_for_signal) and not stop.is_set():
                    self._cond.wait(0.5)
            finally:
                self._outages_waiting -= 1
            self._outage = True
        try:
            yield
        finally:
            with self._cond:
                self._outage = False
                self._cond.notify_all()
