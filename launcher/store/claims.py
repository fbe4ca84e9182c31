"""store/claims.py: which worker runs a unit now. One owner at a time; a dead owner's unit is taken over.

A claim is a file `claims/<generation>.json` in the unit's folder, created with O_CREAT|O_EXCL (atomic on local
file systems and on NFSv3+/Lustre): of two workers that race for the same generation, exactly one wins. The owner
is the holder of the highest generation. To take a unit over, a worker creates the *next* generation, so two
workers that both see a dead owner still race for one file, and a taken-over owner finds a higher generation than
its own the next time it checks (`still_mine`) and stops writing.

An owner is dead when any of these holds, checked in this order:
- it ran in this same Slurm job and worker slot before a requeue (an earlier restart of us): at once;
- it ran on this host, in this PID namespace, and its process (pid + start time) is gone: at once;
- its claim file was not touched for `lease_s` (owners touch theirs every few seconds): another node died. How long
  a file went untouched is measured on the storage's clock, and a stamp in the future counts from when it was first
  seen (claim_clock.py): no clock, however wrong, keeps a unit claimed for ever.
A released claim (`<generation>.released` beside it: the owner stopped on purpose, preempted or failed) is free.

A false takeover (an owner alive but cut off for longer than the lease) cannot lose or corrupt records: the old
owner stops at its next check, both write only whole, checksummed chunks under their own generation, and records
are keyed by row, so a row written twice is the same bytes twice and gather keeps one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.slurm_env import SlurmEnv
from launcher.store.atomic import STORAGE_ERRNOS, storage_wait_s
from launcher.store.claim_clock import untouched_s

LEASE_VAR = "LAUNCHER_CLAIM_LEASE_S"
DEFAULT_LEASE_S = 120.0  # >> the heartbeat (5 s) and NFS attribute caches (up to 60 s); clocks: claim_clock.py
HEARTBEAT_S = 5.0
STALE_CLAIM_S = 60.0  # an unreadable claim file this old was left by a writer that died: its number is reused


def lease_s() -> float:
    value = os.environ.get(LEASE_VAR)
    return float(value) if value else DEFAULT_LEASE_S


def process_start(pid: int) -> int | None:
    """The start time of a running process (clock ticks after boot), None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ')': the fields after the last ')' are fixed.
    state, *rest = text.rsplit(")", 1)[1].split()
    return None if state in ("Z", "X") else int(rest[18])  # field 22 of stat(5)


def pid_namespace() -> str:
    """Which PID namespace this process sees (two containers on one host number their processes apart)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Owner:
    """A worker, as its claims name it."""

    worker: str
    """The worker slot: `<job index>.<replica>`; the same across requeues of the job."""
    host: str
    pid: int
    pid_start: int | None
    pid_ns: str
    job_id: str | None
    """SLURM_JOB_ID (an array element's own id), None outside Slurm."""
    restart: int
    """SLURM_RESTART_COUNT: 0 first, +1 per requeue."""

    @classmethod
    def me(cls, worker: str) -> Owner:
        pid = os.getpid()
        slurm = SlurmEnv.current()
        return cls(worker, socket.gethostname(), pid, process_start(pid), pid_namespace(), slurm.job_id, slurm.restart)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Owner:
        return cls(
            str(obj["worker"]),
            str(obj["host"]),
            int(obj["pid"]),
            obj.get("pid_start"),
            str(obj.get("pid_ns", "unknown")),
            obj.get("job_id"),
            int(obj.get("restart") or 0),
        )

    def label(self) -> str:
        job = f" job {self.job_id}" + (f" restart {self.restart}" if self.restart else "") if self.job_id else ""
        return f"worker {self.worker} (pid {self.pid} on {self.host}{job})"


@dataclass(frozen=True)
class Claim:
    generation: int
    path: Path
    owner: Owner
    released: bool = False
    age_s: float = 0.0  # since the owner last touched it


class ClaimBook:
    """The claims of one unit: `<unit dir>/claims/`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def head(self, observe: bool = True) -> Claim | None:
        """The newest claim (highest generation), or None when the unit was never claimed. `observe`: a claim
        stamped in the future starts its witness here (workers); False reads only (status)."""
        try:
            names = [p.name for p in self.folder.iterdir()]
        except FileNotFoundError:
            return None
        gens = sorted(
            (int(n.removesuffix(".json")) for n in names if n.endswith(".json") and n[:-5].isdigit()), reverse=True
        )
        for gen in gens:
            path = self.folder / f"{gen:06d}.json"
            try:
                st = path.stat()
                owner = Owner.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being created this instant, or damaged: the next generation up decides
            released = f"{gen:06d}.released" in names or (self.folder / f"{gen:06d}.released").exists()
            return Claim(gen, path, owner, released, untouched_s(path, st, observe))
        return None

    def try_claim(self, me: Owner, lease: float | None = None) -> Claim | None:
        """Take the unit if it is free, released, or its owner is dead; None when another live worker has it."""
        head = self.head()
        lease = lease_s() if lease is None else lease
        if head is not None and not head.released and not owner_is_dead(head, me, lease):
            return None
        gen = 0 if head is None else head.generation + 1
        path = self.folder / f"{gen:06d}.json"
        deadline: float | None = None
        while True:
            try:
                return self._create(path, gen, me)
            except FileExistsError:
                if self._clear_stale(path):
                    continue  # a claim file a crash left unreadable long ago: its number is free again
                return None  # another worker won this generation
            except OSError as exc:  # full or read-only storage: waited out as every other write (store/atomic.py)
                if exc.errno not in STORAGE_ERRNOS:
                    raise
                deadline = deadline if deadline is not None else time.monotonic() + storage_wait_s()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def _create(self, path: Path, gen: int, me: Owner) -> Claim:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(me)))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()  # never leave a half-written claim behind
            raise
        return Claim(gen, path, me)

    @staticmethod
    def _clear_stale(path: Path) -> bool:
        """True when `path` was an unreadable claim older than STALE_CLAIM_S (its writer died between creating and
        writing it) and is now moved aside. A fresh unreadable one is a racer writing this instant: left alone."""
        try:
            Owner.from_json(json.loads(path.read_text()))
            return False
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            if untouched_s(path, path.stat()) < STALE_CLAIM_S:
                return False
            path.rename(path.with_name(f"{path.name}.unreadable-{os.getpid()}"))
            return True
        except OSError:
            return False

    def still_mine(self, claim: Claim) -> bool:
        """False once another worker took the unit over (a higher generation exists)."""
        head = self.head()
        return head is not None and head.generation == claim.generation and not head.released

    def release(self, claim: Claim) -> None:
        """Give the unit back on purpose (preempted, failed): another worker may take it at once."""
        with contextlib.suppress(FileExistsError, OSError):
            os.close(os.open(self.folder / f"{claim.generation:06d}.released", os.O_CREAT | os.O_EXCL | os.O_WRONLY))

    @staticmethod
    def heartbeat(claim: Claim) -> None:
        with contextlib.suppress(OSError):  # a claim removed meanwhile: still_mine() will say so
            os.utime(claim.path)


def owner_is_dead(claim: Claim, me: Owner, lease: float) -> bool:
    """See the module docstring for the three rules."""
    o = claim.owner
    if o == me:
        return False
    if o.job_id is not None and o.job_id == me.job_id and o.worker == me.worker and o.restart < me.restart:
        return True  # our own job before Slurm requeued it
    if o.host == me.host and o.pid_ns == me.pid_ns and o.pid_ns != "unknown":
        start = process_start(o.pid)  # alive here: no lease needed; gone (or its pid reused): dead
        return start is None or (o.pid_start is not None and start != o.pid_start)
    return claim.age_s > lease


__all__ = ["HEARTBEAT_S", "Claim", "ClaimBook", "Owner", "lease_s", "owner_is_dead", "process_start"]
