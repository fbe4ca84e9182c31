"""store/unit_dir.py: one unit's folder -> its checked chunks, quarantine, done marker, claims and failures.

    units/<unit id>/
        chunks/<generation>-<seq>-<sha256[:16]>.jsonl   whole records, sorted by row; the name carries the checksum
        quarantine.jsonl                              rows that cannot be generated, with the reason
        claims/                                        who runs it (claims.py)
        failures/<owner>.json                          a worker that crashed while holding it
        done.json                                      every row is in a chunk or quarantined; lists the chunks

Claims, done markers, give-backs and reopenings are also told to the run's units.log (unit_log.py), which is how
workers and status learn of them without visiting every unit's folder.

A chunk whose bytes no longer match the checksum in its name (a flipped byte, a truncated copy) is damaged: its rows
count as not done, and `rows_done()` says so instead of failing on bad JSON, so a rerun regenerates exactly them.
So is a chunk that is not a plain file of yours (a link, a FIFO, another user's file): it is never read.
Every file is reached through `opener` (RunDir.folder_at for a unit of a run: checked, store/fs.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import UntrustedFile
from launcher.store.atomic import read_json, write_atomic, write_json_atomic
from launcher.store.claims import Claim, ClaimBook, Owner
from launcher.store.failure_records import UnitFailure
from launcher.store.fs import Folder, Opener, plain_folder
from launcher.store.jsonl import BadLine, encode_lines, parse_lines
from launcher.store.records import OutputRow, UnitDone
from launcher.store.unit_log import UnitEvent, UnitLog, claim_event

CHUNK_RE = re.compile(r"^(\d{6})-(\d{6})-([0-9a-f]{16})\.jsonl$")


def chunk_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class ChunkScan:
    """What the chunks on disk hold: rows done, and the chunks that failed their checksum."""

    rows: dict[int, OutputRow] = field(default_factory=dict)
    good: dict[str, str] = field(default_factory=dict)  # chunk name -> digest
    damaged: list[Path] = field(default_factory=list)
    duplicates: int = 0  # rows in two chunks (a taken-over owner's last chunk): the same bytes, one kept


@dataclass(frozen=True)
class UnitDir:
    root: Path
    opener: Opener = field(default=plain_folder, compare=False, repr=False)
    log: UnitLog | None = field(default=None, compare=False, repr=False)
    """The run's units.log (RunDir.unit gives it); None: events are not recorded."""

    def _folder(self, path: Path, create: bool = False) -> Folder:
        return self.opener(path, create)

    @property
    def chunks(self) -> Path:
        return self.root / "chunks"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.jsonl"

    @property
    def done_marker(self) -> Path:
        return self.root / "done.json"

    @property
    def failures(self) -> Path:
        return self.root / "failures"

    @property
    def faults(self) -> Path:
        """Test-only: the crashes launcher/faults.py injected into this unit, one file each."""
        return self.root / "faults"

    @property
    def claims(self) -> ClaimBook:
        return ClaimBook(self.root / "claims", self.opener)

    @property
    def unit_id(self) -> str:
        return self.root.name

    def claim(self, me: Owner, fresh: bool = False) -> Claim | None:
        """ClaimBook.try_claim, told to the run's log when won. `fresh`: the run's complete units.log never named the
        unit, so it was never claimed: its folders are made first and generation 0 created at once (no listing, one
        lookup per folder fewer); a claim found there after all goes the usual way."""
        claim = self._claim_fresh(me) if fresh else None
        claim = claim or self.claims.try_claim(me)
        if claim is not None and self.log is not None:
            self.log.append(claim_event(self.unit_id, claim))
        return claim

    def _claim_fresh(self, me: Owner) -> Claim | None:
        book = self.claims
        try:
            with (
                self._folder(self.root.parent) as units,
                units.walk((self.unit_id, book.folder.name), create=True, new=True) as folder,
            ):
                return book.try_first(me, folder)
        except (OSError, UntrustedFile):  # no units/ yet (the run's first claim), full storage, a planted name
            return None

    def release(self, claim: Claim) -> None:
        """ClaimBook.release, told to the run's log: the unit is free for the next worker at once. Never waits on
        storage (it runs in a preemption's signal handler)."""
        self.claims.release(claim)
        if self.log is not None:
            self.log.append(UnitEvent("release", self.unit_id, claim.generation), wait=False)

    def mark_done(self, done: UnitDone) -> None:
        """Write done.json, then tell the run's log (in that order: a `done` line means the marker is there)."""
        self.write_done(done)
        if self.log is not None:
            self.log.append(UnitEvent("done", self.unit_id, int(done.get("generation", 0))))

    def chunk_files(self) -> list[Path]:
        try:
            with self._folder(self.chunks) as folder:
                return [self.chunks / n for n in folder.names() if CHUNK_RE.match(n)]
        except (OSError, UntrustedFile):
            return []

    def scan(self, keep_rows: bool = True) -> ChunkScan:
        """Read and check every chunk. Damaged ones are listed, never raised on."""
        out = ChunkScan()
        try:
            folder = self._folder(self.chunks)
        except (OSError, UntrustedFile):
            return out
        with folder:
            for name in folder.names():
                m = CHUNK_RE.match(name)
                if m:
                    self._scan_chunk(folder, name, m.group(3), out, keep_rows)
        return out

    def _scan_chunk(self, folder: Folder, name: str, digest: str, out: ChunkScan, keep_rows: bool) -> None:
        path = self.chunks / name
        try:
            data = folder.read_bytes(name)
        except (OSError, UntrustedFile):
            out.damaged.append(path)
            return
        if chunk_digest(data) != digest:
            out.damaged.append(path)
            return
        try:  # split on b"\n" only (store/jsonl.py says why)
            rows = [OutputRow(**obj) for obj in parse_lines(data, str(path))]  # type: ignore[typeddict-item]
        except BadLine:  # its checksum holds, yet it does not parse: not ours to trust either
            out.damaged.append(path)
            return
        out.good[name] = digest
        for row in rows:
            if row["row"] in out.rows:
                out.duplicates += 1
                continue
            out.rows[row["row"]] = row if keep_rows else OutputRow()

    def write_chunk(self, generation: int, seq: int, rows: list[OutputRow]) -> Path:
        # strict: a row UTF-8 cannot encode raises here, before anything is written (the worker quarantines such a
        # record before it reaches a chunk: job/worker.py)
        data = encode_lines(dict(r) for r in sorted(rows, key=lambda r: r["row"]))
        path = self.chunks / f"{generation:06d}-{seq:06d}-{chunk_digest(data)}.jsonl"
        write_atomic(path, data, opener=self.opener)
        return path

    def set_damaged_aside(self, damaged: list[Path]) -> None:
        """Rename damaged chunks out of the way (kept for a post-mortem): their rows are generated again."""
        with contextlib.suppress(OSError, UntrustedFile), self._folder(self.chunks) as folder:
            for path in damaged:
                with contextlib.suppress(OSError):
                    folder.rename(path.name, path.name + f".damaged-{int(time.time())}")

    def write_quarantine(self, rows: list[dict[str, Any]]) -> None:
        # a quarantined row may hold what UTF-8 cannot encode (that may be why it is here): that line is written
        # with JSON escapes instead of failing the unit (store/jsonl.py)
        write_atomic(self.quarantine, encode_lines(rows, lone_surrogates="escape"), opener=self.opener)

    def read_quarantine(self) -> list[dict[str, Any]]:
        try:
            data = self._read(self.quarantine)
        except FileNotFoundError:
            return []
        return list(parse_lines(data, str(self.quarantine)))

    def read_done(self) -> UnitDone:
        return UnitDone(**read_json(self.done_marker, self.opener))  # type: ignore[typeddict-item]

    def write_done(self, done: UnitDone) -> None:
        write_json_atomic(self.done_marker, done, opener=self.opener)

    def is_done(self) -> bool:
        """The marker is there (fast: what workers check before claiming). `verify()` checks the chunks too."""
        return self._has(self.done_marker)

    def _has(self, path: Path) -> bool:
        try:
            with self._folder(path.parent) as folder:
                return folder.exists(path.name)
        except (OSError, UntrustedFile):
            return False

    def verify(self, scan: ChunkScan | None = None) -> list[str]:
        """Problems with a unit marked done: chunks it lists that are missing or fail their checksum. Empty: ok.
        Given the unit's `scan()`, a chunk it found good is not read again."""
        done = self.read_done()
        if not done:
            return ["done.json is missing or unreadable"] if self.is_done() else []
        problems = []
        for name, digest in sorted((done.get("chunks") or {}).items()):
            if scan is not None and scan.good.get(name) == digest:
                continue
            path = self.chunks / name
            try:
                data = self._read(path)
            except FileNotFoundError:
                problems.append(f"chunk {path} is missing")
                continue
            except UntrustedFile as exc:
                problems.append(f"chunk {path} {exc.first.message}")
                continue
            if chunk_digest(data) != digest:
                problems.append(
                    f"chunk {path} fails its checksum (sha256 starts {chunk_digest(data)}, "
                    f"{digest} when written): damaged or truncated"
                )
        return problems

    def reopen(self, why: str) -> None:
        """A done unit whose chunks are damaged or missing is not done: the next run regenerates what is missing."""
        done = self.read_done()
        listed = set((done.get("chunks") or {}).keys())
        bad = [p for p in self.chunk_files() if p.name in listed and not self._matches(p)]
        self.set_damaged_aside(bad)
        with contextlib.suppress(OSError, UntrustedFile), self._folder(self.root) as folder:
            folder.rename(self.done_marker.name, f"{self.done_marker.name}.reopened-{int(time.time())}")
        write_json_atomic(self.root / "reopened.json", {"time": time.time(), "why": why}, opener=self.opener)
        if self.log is not None:
            self.log.append(UnitEvent("reopen", self.unit_id, -1))

    def record_failure(self, owner: str, failure: UnitFailure) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", owner)[:120]
        path = self.failures / f"{safe}-{int(time.time() * 1000)}.json"
        write_json_atomic(path, failure.to_json(), opener=self.opener)

    def read_failures(self) -> list[UnitFailure]:
        """Every failure of the unit, in the folder's order; a file that is not a JSON object is skipped."""
        try:
            with self._folder(self.failures) as folder:
                names = [n for n in folder.names() if n.endswith(".json")]
        except (OSError, UntrustedFile):
            return []
        return [UnitFailure.from_json(f) for f in (read_json(self.failures / n, self.opener) for n in names) if f]

    def chunk_lines(self, path: Path) -> int:
        """How many records a chunk of this unit holds (0 when it cannot be read)."""
        try:
            return self._read(path).count(b"\n")
        except (OSError, UntrustedFile):
            return 0

    def _read(self, path: Path) -> bytes:
        with self._folder(path.parent) as folder:
            return folder.read_bytes(path.name)

    def _matches(self, path: Path) -> bool:
        m = CHUNK_RE.match(path.name)
        try:
            return bool(m) and chunk_digest(self._read(path)) == m.group(3)  # type: ignore[union-attr]
        except (OSError, UntrustedFile):
            return False


def chunk_listing(scan: ChunkScan) -> dict[str, str]:
    return dict(sorted(scan.good.items()))


__all__ = ["CHUNK_RE", "ChunkScan", "UnitDir", "chunk_digest", "chunk_listing"]
