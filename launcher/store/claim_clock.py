"""store/claim_clock.py: a claim file -> how long it has gone untouched, on clocks that cannot lie about the future.

A claim's age decides when its owner is dead (claims.py), so it must survive wrong clocks:
- "now" is the storage's own clock, not this node's: a file created and stamped in the claims folder says what time
  the file system gives new stamps (the NFS server's clock; the kernel's on a local disk), read at most every
  PROBE_EVERY_S and carried forward with time.monotonic() in between. A node whose wall clock is off, or jumps
  (an NTP step, a suspended VM), still measures ages as the storage stamps them; where nothing can be written (a
  read-only viewer), this node's clock stands in.
- a claim stamped in the future (its writer's clock, or the file server's, was ahead) tells nothing about when it was
  last touched. Its age is counted from when it was first seen unchanged (same mtime, ctime, size, inode): in this
  process on the monotonic clock, and across processes and submissions in a witness file `<generation>.seen` beside
  the claim, created the first time an observer saw that stamp. A heartbeat changes the stamp, so a live owner,
  however wrong its clock, is never taken for dead; a dead one is after a lease, as on a sane clock. Before this, a
  claim stamped in the future had an age of 0 for ever and its unit could never be claimed again.
- a claim stamped in the past (by years, even) is simply old: its owner is judged dead by the lease, exactly as
  before. If that owner was in fact alive with a clock far behind, that is a false takeover, which claims.py shows
  cannot lose or corrupt records.

The probe and the witness files live in the claims folder, which is the run's (0700, store/run_dir.py): they are
made and read through its checked descriptor (store/fs.py), created with O_EXCL | O_NOFOLLOW at a random name, 0600;
a link, a FIFO or another user's file planted at a witness's name is never read nor written through (it counts as no
witness, and is replaced by a rename).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from launcher.errors import UntrustedFile
from launcher.store.fs import Folder, temp_name

PROBE_EVERY_S = 30.0
AGREE_S = 1.0  # a node clock this close to the storage's is used as is: file stamps are coarse (a kernel tick)
FUTURE_SLACK_S = 2.0  # stamps this close ahead of now are rounding and attribute caches, not a wrong clock
WITNESS_SUFFIX = ".seen"
PRIVATE_FILE = 0o600


def _probe(folder: Folder) -> float | None:
    """The storage's time now: a new file's stamp in `folder` (None where nothing can be written there)."""
    name = temp_name("clock")
    try:
        fd = folder.create_new(name, PRIVATE_FILE)
    except (OSError, UntrustedFile):
        return None
    try:
        os.utime(fd)  # an exclusive NFS create may store its verifier in the times: stamp it afresh
        return os.fstat(fd).st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            folder.unlink(name)


class StorageClock:
    """Now, as the file system holding a folder stamps files; one probe per file system every PROBE_EVERY_S."""

    def __init__(self) -> None:
        self._base: dict[int, tuple[float, float]] = {}  # st_dev -> (storage time, time.monotonic() then)
        self._lock = threading.Lock()

    def now(self, folder: Folder) -> float:
        mono = time.monotonic()
        try:
            dev = os.fstat(folder.fd).st_dev
        except OSError:
            return time.time()
        with self._lock:
            base = self._base.get(dev)
        if base is None or mono - base[1] > PROBE_EVERY_S:
            wall, at = time.time(), time.monotonic()
            stamp = _probe(folder)
            if stamp is not None:
                base = (wall if abs(stamp - wall) < AGREE_S else stamp, at)
                with self._lock:
                    self._base[dev] = base
        if base is None:
            return time.time()
        return base[0] + (time.monotonic() - base[1])


CLOCK = StorageClock()
_first_seen: dict[tuple[str, str], float] = {}  # (claim path, stamp) -> time.monotonic() when this process saw it


def stamp_of(st: os.stat_result) -> str:
    """What a touch changes: mtime and ctime (utime sets the ctime too), size, inode (a file replaced)."""
    return f"{st.st_mtime_ns} {st.st_ctime_ns} {st.st_size} {st.st_ino}"


def witness_name(claim_name: str) -> str:
    """`000003.json` -> `000003.seen`."""
    return claim_name.removesuffix(".json") + WITNESS_SUFFIX


def untouched_s(folder: Folder, name: str, st: os.stat_result, observe: bool = True) -> float:
    """Seconds since the file `name` in `folder` (stat `st`) was last touched, as far as can be told without trusting
    a stamp that lies in the future. `observe`: record a first sighting in a witness file (workers; status only
    reads)."""
    now = CLOCK.now(folder)
    if st.st_mtime <= now + FUTURE_SLACK_S:
        return max(0.0, now - st.st_mtime)
    stamp = stamp_of(st)
    key = (str(folder.path / name), stamp)
    if len(_first_seen) > 100_000:  # a long-lived process over a huge run: forget, and count again from now
        _first_seen.clear()
    mono = time.monotonic()
    here = mono - _first_seen.setdefault(key, mono)
    return max(here, _witnessed_s(folder, witness_name(name), stamp, now, observe))


def _witnessed_s(folder: Folder, witness: str, stamp: str, now: float, observe: bool) -> float:
    """How long ago some observer first saw the claim with this stamp (its witness file's own stamp), 0 when none
    did. A witness that is not a plain file of yours counts as none (and is replaced when observing)."""
    try:
        with folder.open_read(witness) as f:
            seen: os.stat_result | None = os.fstat(f.fileno())
            same = f.read(256).decode("utf-8") == stamp
    except (OSError, ValueError, UntrustedFile):
        seen, same = None, False
    if seen is not None and same and seen.st_mtime <= now + FUTURE_SLACK_S:
        return max(0.0, now - seen.st_mtime)
    if observe:  # the first sighting of this stamp (or the witness itself was stamped by a clock ahead): from now
        with contextlib.suppress(OSError, UntrustedFile):  # best effort: the monotonic count above still holds
            folder.write_atomic(witness, stamp.encode("utf-8"), PRIVATE_FILE)
    return 0.0


__all__ = ["CLOCK", "FUTURE_SLACK_S", "WITNESS_SUFFIX", "StorageClock", "stamp_of", "untouched_s", "witness_name"]
