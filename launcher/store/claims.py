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
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.errors import UntrustedFile
from launcher.slurm_env import SlurmEnv
from launcher.store.atomic import STORAGE_ERRNOS, storage_wait_s
from launcher.store.claim_clock import untouched_s
from launcher.store.fs import PRIVATE, Folder, Opener, private_folder

log = logging.getLogger("launcher.store")

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
    """The claims of one unit: `<unit dir>/claims/`, reached through `opener` (RunDir.folder_at for a unit of a run:
    never through a link, yours, 0700; store/fs.py). Claim files are made with O_EXCL | O_NOFOLLOW, 0600, and read
    only when they are plain files (a link or a FIFO planted at a claim's name is a damaged claim, never followed)."""

    def __init__(self, folder: Path, opener: Opener = private_folder) -> None:
        self.folder = folder
        self.opener = opener

    def _open(self, create: bool = False) -> Folder:
        return self.opener(self.folder, create)

    def head(self, observe: bool = True) -> Claim | None:
        """The newest claim (highest generation), or None when the unit was never claimed (or its claims folder is
        not one of yours: logged; claiming it then refuses). `observe`: a claim stamped in the future starts its
        witness here (workers); False reads only (status)."""
        try:
            folder = self._open()
        except FileNotFoundError:
            return None
        except UntrustedFile as exc:
            log.warning("claims not read: %s", exc)
            return None
        with folder:
            return self._head(folder, observe)

    def _head(self, folder: Folder, observe: bool) -> Claim | None:
        names = folder.names()
        gens = sorted(
            (int(n.removesuffix(".json")) for n in names if n.endswith(".json") and n[:-5].isdigit()), reverse=True
        )
        for gen in gens:
            name = f"{gen:06d}.json"
            try:
                with folder.open_read(name) as f:
                    st = os.fstat(f.fileno())
                    owner = Owner.from_json(json.loads(f.read()))
            except (OSError, ValueError, KeyError, TypeError, UntrustedFile):
                continue  # being created this instant, or damaged: the next generation up decides
            released = f"{gen:06d}.released" in names or folder.exists(f"{gen:06d}.released")
            return Claim(gen, folder.path / name, owner, released, untouched_s(folder, name, st, observe))
        return None

    def try_claim(self, me: Owner, lease: float | None = None) -> Claim | None:
        """Take the unit if it is free, released, or its owner is dead; None when another live worker has it."""
        head = self.head()
        lease = lease_s() if lease is None else lease
        if head is not None and not head.released and not owner_is_dead(head, me, lease):
            return None
        gen = 0 if head is None else head.generation + 1
        deadline: float | None = None
        while True:
            try:
                return self._create(gen, me)
            except FileExistsError:
                if self._clear_stale(f"{gen:06d}.json"):
                    continue  # a claim file a crash left unreadable long ago: its number is free again
                return None  # another worker won this generation
            except OSError as exc:  # full or read-only storage: waited out as every other write (store/atomic.py)
                if exc.errno not in STORAGE_ERRNOS:
                    raise
                deadline = deadline if deadline is not None else time.monotonic() + storage_wait_s()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def try_first(self, me: Owner, folder: Folder) -> Claim | None:
        """Generation 0 made in `folder` (this book's, open): the claim of a unit never claimed before, without
        listing the folder first. None when a claim is there already (a racer won, or a claim the caller did not
        know of): try_claim then decides by the rules above."""
        try:
            folder.create_exclusive(f"{0:06d}.json", json.dumps(asdict(me)).encode(), mode=PRIVATE.file)
        except FileExistsError:
            return None
        return Claim(0, self.folder / f"{0:06d}.json", me)

    def _create(self, gen: int, me: Owner) -> Claim:
        name = f"{gen:06d}.json"
        with self._open(create=True) as folder:  # a half-written claim is removed again (Folder.create_exclusive)
            folder.create_exclusive(name, json.dumps(asdict(me)).encode(), mode=PRIVATE.file)
        return Claim(gen, self.folder / name, me)

    def _clear_stale(self, name: str) -> bool:
        """True when `name` was an unreadable claim older than STALE_CLAIM_S (its writer died between creating and
        writing it) and is now moved aside. A fresh unreadable one is a racer writing this instant: left alone."""
        try:
            with self._open() as folder:
                try:
                    with folder.open_read(name) as f:
                        Owner.from_json(json.loads(f.read()))
                    return False
                except (ValueError, KeyError, TypeError, UntrustedFile):
                    pass
                st = folder.stat(name)  # lstat: a link planted there is judged by its own stamp, never followed
                if st is None or untouched_s(folder, name, st) < STALE_CLAIM_S:
                    return False
                folder.rename(name, f"{name}.unreadable-{os.getpid()}")
                return True
        except (OSError, UntrustedFile):
            return False

    def still_mine(self, claim: Claim) -> bool:
        """False once another worker took the unit over (a higher generation exists)."""
        head = self.head()
        return head is not None and head.generation == claim.generation and not head.released

    def release(self, claim: Claim) -> None:
        """Give the unit back on purpose (preempted, failed): another worker may take it at once."""
        with contextlib.suppress(OSError, UntrustedFile), self._open() as folder:
            folder.create_exclusive(f"{claim.generation:06d}.released", mode=PRIVATE.file)

    def heartbeat(self, claim: Claim) -> None:
        """Touch the claim (its stamp is its owner's sign of life), never through a link at its name."""
        with contextlib.suppress(OSError, UntrustedFile), self._open() as folder:  # gone: still_mine() says so
            os.utime(claim.path.name, dir_fd=folder.fd, follow_symlinks=False)


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
