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
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.store.atomic import read_json, write_atomic, write_json_atomic
from launcher.store.claims import Claim, ClaimBook, Owner
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
    log: UnitLog | None = None  # the run's units.log (RunDir.unit gives it); None: events are not recorded

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
    def claims(self) -> ClaimBook:
        return ClaimBook(self.root / "claims")

    @property
    def unit_id(self) -> str:
        return self.root.name

    def claim(self, me: Owner) -> Claim | None:
        """ClaimBook.try_claim, told to the run's log when won."""
        claim = self.claims.try_claim(me)
        if claim is not None and self.log is not None:
            self.log.append(claim_event(self.unit_id, claim))
        return claim

    def release(self, claim: Claim) -> None:
        """ClaimBook.release, told to the run's log: the unit is free for the next worker at once. Never waits on
        storage (it runs in a preemption's signal handler)."""
        self.claims.release(claim)
        if self.log is not None:
            self.log.append(UnitEvent("release", self.unit_id, claim.generation), wait=False)

    def mark_done(self, done: UnitDone) -> None:
        """Write done.json, then tell the run's log (in that order: a `done` line means the marker is there)."""
        write_json_atomic(self.done_marker, done)
        if self.log is not None:
            self.log.append(UnitEvent("done", self.unit_id, int(done.get("generation", 0))))

    def chunk_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.chunks.iterdir() if CHUNK_RE.match(p.name))
        except FileNotFoundError:
            return []

    def scan(self, keep_rows: bool = True) -> ChunkScan:
        """Read and check every chunk. Damaged ones are listed, never raised on."""
        out = ChunkScan()
        for path in self.chunk_files():
            m = CHUNK_RE.match(path.name)
            assert m is not None
            try:
                data = path.read_bytes()
            except OSError:
                out.damaged.append(path)
                continue
            if chunk_digest(data) != m.group(3):
                out.damaged.append(path)
                continue
            try:  # split on b"\n" only (store/jsonl.py says why)
                rows = [OutputRow(**obj) for obj in parse_lines(data, str(path))]  # type: ignore[typeddict-item]
            except BadLine:  # its checksum holds, yet it does not parse: not ours to trust either
                out.damaged.append(path)
                continue
            out.good[path.name] = m.group(3)
            for row in rows:
                if row["row"] in out.rows:
                    out.duplicates += 1
                    continue
                out.rows[row["row"]] = row if keep_rows else OutputRow()
        return out

    def write_chunk(self, generation: int, seq: int, rows: list[OutputRow]) -> Path:
        # strict: a row UTF-8 cannot encode raises here, before anything is written (the worker quarantines such a
        # record before it reaches a chunk: job/worker.py)
        data = encode_lines(dict(r) for r in sorted(rows, key=lambda r: r["row"]))
        path = self.chunks / f"{generation:06d}-{seq:06d}-{chunk_digest(data)}.jsonl"
        write_atomic(path, data)
        return path

    def set_damaged_aside(self, damaged: list[Path]) -> None:
        """Rename damaged chunks out of the way (kept for a post-mortem): their rows are generated again."""
        for path in damaged:
            with contextlib.suppress(OSError):
                path.rename(path.with_name(path.name + f".damaged-{int(time.time())}"))

    def write_quarantine(self, rows: list[dict[str, Any]]) -> None:
        # a quarantined row may hold what UTF-8 cannot encode (that may be why it is here): that line is written
        # with JSON escapes instead of failing the unit (store/jsonl.py)
        write_atomic(self.quarantine, encode_lines(rows, lone_surrogates="escape"))

    def read_quarantine(self) -> list[dict[str, Any]]:
        try:
            data = self.quarantine.read_bytes()
        except FileNotFoundError:
            return []
        return list(parse_lines(data, str(self.quarantine)))

    def read_done(self) -> UnitDone:
        return UnitDone(**read_json(self.done_marker))  # type: ignore[typeddict-item]

    def is_done(self) -> bool:
        """The marker is there (fast: what workers check before claiming). `verify()` checks the chunks too."""
        return self.done_marker.exists()

    def verify(self, scan: ChunkScan | None = None) -> list[str]:
        """Problems with a unit marked done: chunks it lists that are missing or fail their checksum. Empty: ok.
        Given the unit's `scan()`, a chunk it found good is not read again."""
        done = self.read_done()
        if not done:
            return ["done.json is missing or unreadable"] if self.done_marker.exists() else []
        problems = []
        for name, digest in sorted((done.get("chunks") or {}).items()):
            if scan is not None and scan.good.get(name) == digest:
                continue
            path = self.chunks / name
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                problems.append(f"chunk {path} is missing")
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
        bad = [p for p in self.chunk_files() if p.name in listed and not _matches(p)]
        self.set_damaged_aside(bad)
        with contextlib.suppress(OSError):
            self.done_marker.rename(self.root / f"done.json.reopened-{int(time.time())}")
        write_json_atomic(self.root / "reopened.json", {"time": time.time(), "why": why})
        if self.log is not None:
            self.log.append(UnitEvent("reopen", self.unit_id, -1))

    def record_failure(self, owner: str, info: dict[str, Any]) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", owner)
        write_json_atomic(self.failures / f"{safe}-{int(time.time() * 1000)}.json", info)

    def read_failures(self) -> list[dict[str, Any]]:
        try:
            paths = sorted(self.failures.glob("*.json"))
        except OSError:
            return []
        return [f for f in (read_json(p) for p in paths) if f]


def _matches(path: Path) -> bool:
    m = CHUNK_RE.match(path.name)
    try:
        return bool(m) and chunk_digest(path.read_bytes()) == m.group(3)  # type: ignore[union-attr]
    except OSError:
        return False


def chunk_listing(scan: ChunkScan) -> dict[str, str]:
    return dict(sorted(scan.good.items()))


__all__ = ["CHUNK_RE", "ChunkScan", "UnitDir", "chunk_digest", "chunk_listing"]
