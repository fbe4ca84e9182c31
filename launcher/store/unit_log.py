"""store/unit_log.py: the run's unit events (claimed, done, given back, reopened) -> one append-only file, `units.log`;
and that file -> what is known of every unit (UnitView). Workers and `launcher status` read it instead of visiting
each unit's folder, so a claim or a status costs about the same at 10,000 units as at 10 (docs/scale.md).

A hint, never the truth. A unit's own folder decides (done.json, the claim files of store/claims.py), and whoever
acts on an event checks that folder first; a missing or damaged line costs extra file operations, never a record.
What the readers rely on:
- an event is appended *after* the fact it reports (the claim file created, done.json renamed into place), so a
  `done` line means done.json was there when it was written (a later `reopen` line undoes it);
- a log that starts with the header line was there when the run's plan was written: every claim of the run went
  through it, and a unit it never names was never claimed. A log without the header (a run planned by an older
  launcher) proves nothing of the kind; `complete` says which.

One line per event, written with one write() under an exclusive fcntl lock on an O_APPEND descriptor:

    claim <generation> <unit id> <worker slot> <host> <pid> <pid start> <pid ns> <crc32>
    done <generation> <unit id> - - - - - <crc32>

O_APPEND alone keeps concurrent lines whole on a local file system and on Lustre; NFS clients append at the size
they last saw, so two nodes may write over each other: the lock makes an NFS client revalidate the size first. The
crc32 (of the line before it) drops a line torn anyway. Ids and names hold no spaces (spec slugs, host names).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import UntrustedFile
from launcher.store.atomic import STORAGE_ERRNOS, storage_wait_s
from launcher.store.claims import Claim
from launcher.store.fs import PRIVATE, Opener, private_folder

log = logging.getLogger("launcher.store")

HEADER = "# launcher units.log 1\n"
_HEADER_LINE = HEADER.rstrip("\n").encode()
KINDS = frozenset({"claim", "done", "release", "reopen"})


@dataclass(frozen=True, slots=True)
class UnitEvent:
    kind: str  # claim, done, release, reopen
    unit_id: str
    generation: int  # the claim's generation (-1 for reopen)
    slot: str = "-"  # the claiming worker's slot, and where it ran (claim events only)
    host: str = "-"
    pid: int = 0
    pid_start: int | None = None
    pid_ns: str = "-"

    def line(self) -> str:
        start = "-" if self.pid_start is None else str(self.pid_start)
        body = (
            f"{self.kind} {self.generation} {self.unit_id} {self.slot or '-'} {self.host or '-'} {self.pid} {start} "
            f"{self.pid_ns or '-'}"
        )
        return f"{body} {zlib.crc32(body.encode()):08x}\n"

    @classmethod
    def parse(cls, line: bytes) -> UnitEvent | None:
        """One line without its newline -> the event; None for anything that is not a whole, checksummed event line
        (a torn write, the header, bytes that are not UTF-8)."""
        cut = line.rfind(b" ")
        try:
            if cut < 0 or int(line[cut + 1 :], 16) != zlib.crc32(line[:cut]):
                return None
            kind, gen, unit, slot, host, pid, start, ns = line[:cut].decode().split(" ")
            if kind not in KINDS:
                return None
            return cls(kind, unit, int(gen), slot, host, int(pid), None if start == "-" else int(start), ns)
        except ValueError:  # a field too many or too few, not a number, not UTF-8
            return None


def claim_event(unit_id: str, claim: Claim) -> UnitEvent:
    o = claim.owner
    return UnitEvent("claim", unit_id, claim.generation, o.worker, o.host, o.pid, o.pid_start, o.pid_ns)


# One append descriptor per log and process (opened on first use, again after a fork), shared by its threads.
_append_fds: dict[tuple[str, int], int] = {}
_append_lock = threading.RLock()  # re-entrant: a signal handler (preemption) may append while its thread is inside


@dataclass(frozen=True)
class UnitLog:
    """`<run dir>/units.log` (RunDir.unit_events), reached through `opener` (RunDir.folder_at: the checked run
    folder, store/fs.py). It is read and appended to only as a plain file of yours with one link, never through a
    link, never blocking on a FIFO (Folder.open_private); kept 0600 in the 0700 run folder."""

    path: Path
    opener: Opener = field(default=private_folder, compare=False, repr=False)

    def create(self) -> bool:
        """Start the log of a new run with its header (at plan time, before any worker runs). False when a log is
        already there: a resubmit keeps it (and anything planted at its name is refused when read or appended to)."""
        try:
            with self.opener(self.path.parent, True) as folder:
                folder.create_exclusive(self.path.name, HEADER.encode(), mode=PRIVATE.file)
        except FileExistsError:
            return False
        return True

    def append(self, event: UnitEvent, wait: bool = True) -> None:
        """One line, whole. Full or read-only storage is waited out as every write is (store/atomic.py), unless
        `wait` is False (a give-back from a preemption's signal handler must not hang); the event is then lost (a
        hint: the unit's folder still holds the truth) and the error is logged, not raised."""
        data = event.line().encode()
        deadline: float | None = None
        while True:
            try:
                self._append_once(data)
                return
            except UntrustedFile as exc:  # planted: never written through; readers refuse it too (UnitView)
                self._forget_fd()
                log.warning("%s event of unit %s not recorded: %s", event.kind, event.unit_id, exc)
                return
            except OSError as exc:
                self._forget_fd()
                if exc.errno in STORAGE_ERRNOS and wait:
                    deadline = deadline if deadline is not None else time.monotonic() + storage_wait_s()
                    if time.monotonic() < deadline:
                        time.sleep(1.0)
                        continue
                log.warning("%s: %s event of unit %s not recorded: %s", self.path, event.kind, event.unit_id, exc)
                return

    def _append_once(self, data: bytes) -> None:
        fd = self._fd()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as exc:  # no lock manager (an NFS mount with nolock): O_APPEND alone
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            locked = False
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write")
        finally:
            if locked:
                fcntl.lockf(fd, fcntl.LOCK_UN)

    def _fd(self) -> int:
        key = (str(self.path), os.getpid())
        with _append_lock:
            fd = _append_fds.get(key)
            if fd is None:
                with self.opener(self.path.parent, True) as folder:
                    fd = folder.open_private(self.path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "units.log")
                _append_fds[key] = fd
            return fd

    def _forget_fd(self) -> None:
        with _append_lock:
            fd = _append_fds.pop((str(self.path), os.getpid()), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class UnitView:
    """What the log says of each unit, folded event by event; `refresh()` reads only what was appended since."""

    log: UnitLog
    done: set[str] = field(default_factory=set)
    holder: dict[str, UnitEvent] = field(default_factory=dict)  # unit -> its newest claim, not done nor given back
    named: set[str] = field(default_factory=set)  # units with any event: they may be done, or have failed
    generations: dict[str, int] = field(default_factory=dict)  # unit -> highest generation claimed
    complete: bool = False  # the log starts with the header (see the module docstring)
    exists: bool = False
    bad_lines: int = 0
    events: int = 0
    _offset: int = 0
    _partial: bytes = b""
    _at_start: bool = True  # the next line read is the file's first
    _refused: bool = False

    def read(self) -> UnitView:
        """refresh(), then this view."""
        self.refresh()
        return self

    def refresh(self) -> int:
        """Read what was appended since the last call (one open: close-to-open consistency on NFS). Returns the
        number of new events."""
        try:
            with self.log.opener(self.log.path.parent, False) as folder:
                fd = folder.open_private(self.log.path.name, os.O_RDONLY, "units.log")
        except FileNotFoundError:
            return 0
        except (OSError, UntrustedFile) as exc:  # a link, a FIFO, another user's file planted in its place
            return self._refuse(exc)
        try:
            chunks = []
            while block := os.pread(fd, 1 << 20, self._offset):
                chunks.append(block)
                self._offset += len(block)
        finally:
            os.close(fd)
        self.exists = True
        data = self._partial + b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        new = 0
        for raw in data[:cut].split(b"\n")[:-1]:
            first, self._at_start = self._at_start, False
            if first and raw == _HEADER_LINE:
                self.complete = True
                continue
            event = UnitEvent.parse(raw)
            if event is None:
                self.bad_lines += 1
                continue
            self.apply(event)
            new += 1
        return new

    def _refuse(self, exc: Exception) -> int:
        """Not read: every reader then goes to the units' folders (the view stays incomplete)."""
        if not self._refused:
            log.warning("%s: not read (%s); unit states are read from their folders", self.log.path, exc)
        self._refused = True
        return 0

    def apply(self, event: UnitEvent) -> None:
        self.events += 1
        u = event.unit_id
        self.named.add(u)
        if event.kind == "claim":
            if event.generation >= self.generations.get(u, -1):
                self.generations[u] = event.generation
                self.holder[u] = event
        elif event.kind == "done":
            self.done.add(u)
            self.holder.pop(u, None)
        elif event.kind == "release":
            held = self.holder.get(u)
            if held is not None and held.generation == event.generation:
                del self.holder[u]
        elif event.kind == "reopen":
            self.done.discard(u)

    def maybe_done(self, unit_id: str) -> bool:
        """Could the unit's folder hold a done marker or failures? Not when the complete log never named it."""
        return unit_id in self.named or not self.complete


__all__ = ["HEADER", "UnitEvent", "UnitLog", "UnitView", "claim_event"]
