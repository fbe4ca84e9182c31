"""submit/lock.py: run_dir/submit.lock -> one `launcher submit` of a run at a time, and none while its local run lives.

Two submits of one run at once would race on the same task outputs. The lock file is held with flock while a submit
decides and submits (released by the kernel if that process dies), and it records the processes of the last local
submission, so that a later submit can tell whether they still write the run's outputs.

Why a record and not just the flock: a local run's tasks outlive the submit call (without --wait its process exits
at once), and the processes that run them are submitit's controllers, which submitit starts with close_fds, so they
cannot inherit the locked file. Each controller lives exactly as long as its task (it waits for it, and kills it when
it ends itself: submitit.local.local.Controller.run), so "the controller lives" is "the task may still write".
A process is named by pid *and* start time: a pid reused by an unrelated process after a crash does not count, and a
run that crashed leaves nothing to clean up (its processes are gone). Known limit: SIGKILL of a controller alone
orphans its task, which then runs unrecorded.

The lock file is rewritten in place, so it is opened through the checked run folder and never through a link or a
second hard link (store/fs.py: Folder.open_lock): a planted one would have the submit truncate another file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from launcher.errors import LauncherError, Refused
from launcher.store import RunDir
from launcher.store.claims import process_start


@dataclass(frozen=True)
class LocalProcess:
    """One process of a local run, as the lock file records it."""

    pid: int
    start: int | None
    """Its start time (clock ticks after boot, /proc/PID/stat); None where there is no /proc."""
    task: int
    """The index of the worker job it runs."""
    host: str

    def alive(self) -> bool | None:
        """True while it runs; None when this host cannot tell (it ran on another one)."""
        if self.host != os.uname().nodename:
            return None
        if self.start is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True  # exists, another user's: pids are not reused that fast
            return True
        return process_start(self.pid) == self.start


def local_processes(pids: Iterable[int], tasks: Iterable[int]) -> list[LocalProcess]:
    """Records for the processes just started for the jobs ``tasks`` (our children: not reaped, so their /proc is
    there)."""
    have_proc = Path("/proc/self/stat").exists()
    host = os.uname().nodename
    return [
        LocalProcess(pid, process_start(pid) if have_proc else None, task, host)
        for pid, task in zip(pids, tasks, strict=True)
    ]


def read_local_processes(path: Path) -> list[LocalProcess]:
    """The local processes the last submit recorded, read without taking the lock (status)."""
    try:
        record = _read_record(RunDir(path.parent).read_bytes(path).decode("utf-8", "replace"))
    except (OSError, LauncherError):
        return []
    return _parse_local(record.get("local", []))


def _parse_local(items: list[Any]) -> list[LocalProcess]:
    found = []
    for item in items:
        try:
            found.append(LocalProcess(int(item["pid"]), item.get("start"), int(item["task"]), str(item["host"])))
        except (KeyError, TypeError, ValueError):
            continue  # written by another version: nothing to check
    return found


class SubmitLock:
    """The held lock of one run; what the previous submit recorded is in ``previous``."""

    def __init__(self, path: Path, file: IO[str], previous: dict[str, Any]) -> None:
        self.path = path
        self._file = file
        self.previous = previous
        # Holder now, but the last local run's processes stay recorded until this submit replaces them (a refused
        # submit must not forget them).
        self._write(previous.get("local", []), previous.get("local_by"))

    def local_processes(self) -> list[LocalProcess]:
        """The processes of the last local submission that still run, or that this host cannot check."""
        return [p for p in _parse_local(self.previous.get("local", [])) if p.alive() is not False]

    def record(self, local: list[LocalProcess]) -> None:
        """This submission's local processes (none for Slurm): they keep the run busy after this submit ends."""
        self._write([asdict(p) for p in local], _me() if local else None)

    def _write(self, local: list[dict[str, Any]], local_by: str | None) -> None:
        self._file.seek(0)
        self._file.truncate(0)
        self._file.write(json.dumps({"holder": _me(), "local": local, "local_by": local_by}) + "\n")
        self._file.flush()

    def local_by(self) -> str:
        """'pid N on HOST' of the submit that started the recorded local processes."""
        return str(self.previous.get("local_by") or "pid unknown")


def _me() -> str:
    return f"pid {os.getpid()} on {os.uname().nodename}"


def _read_record(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        return {"holder": text.strip()}  # the older one-line form: "pid N on HOST"
    return record if isinstance(record, dict) else {}


@contextmanager
def submit_lock(path: Path) -> Iterator[SubmitLock]:
    """Hold ``path`` for one submit; a second submit of the run meanwhile is refused (Refused, with the fix)."""
    RunDir(path.parent).create()
    with RunDir(path.parent).folder(create=True) as run, run.open_lock(path.name) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _read_record(f.read()).get("holder") or "pid unknown"
            raise Refused.one(
                str(path),
                "",
                f"another `launcher submit` of this run holds it ({holder})",
                fix="wait for it, or check `launcher status`",
            ) from None
        try:
            f.seek(0)
            lock = SubmitLock(path, f, _read_record(f.read()))
            yield lock
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def refuse_if_local_run_lives(lock: SubmitLock, run_dir: Path, unfinished: set[int]) -> None:
    """Refuse while a process of the last local submission still works on the run (`unfinished`: its job indices
    while units remain). One whose run is done is only exiting: it writes nothing more."""
    busy = [p for p in lock.local_processes() if p.task in unfinished]
    if not busy:
        return
    here = os.uname().nodename
    pids = " ".join(str(p.pid) for p in busy)
    elsewhere = sorted({p.host for p in busy if p.host != here})
    if elsewhere:
        raise Refused.one(
            str(run_dir),
            "",
            f"the local run started by `launcher submit` ({lock.local_by()}) may "
            f"still run {len(busy)} job(s) of this run on {', '.join(elsewhere)} (pids {pids}), which "
            f"this host ({here}) cannot check",
            fix=f"submit from {elsewhere[0]}, or once those processes have ended there, delete {lock.path}",
        )
    raise Refused.one(
        str(run_dir),
        "",
        f"the local run started by `launcher submit` ({lock.local_by()}) is still "
        f"running {len(busy)} job(s) of this run (pids {pids}), which write the same outputs",
        fix=f"wait for them to end (`launcher status {run_dir}` shows progress), or stop them "
        f"(`launcher cancel {run_dir}`, or `kill {pids}`: each writes what it finished first), then submit again: "
        "finished records are kept",
    )
