"""outputs.py: atomic writes and the on-disk layout of a task's results (chunks, quarantine, done marker).

A task writes chunk files, each to a temporary name then renamed, so shared storage only ever holds whole
chunks; the records in them are done and are never generated again, which is what makes kill-and-rerun safe.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_RE = re.compile(r"^chunk-(\d+)-(\d{6})\.jsonl$")
log = logging.getLogger("launcher.outputs")


# A full or read-only disk (a quota hit, a file server failing over, scratch filling up) is waited out inside a job,
# not fatal: a task that crashed on it could not even record its failure on that same storage, so it would never be
# retried and its records would be lost (the fault campaign, tests/faults, showed exactly that). Outside a job a
# person is watching: fail at once. The wait is bounded; then the error is raised as before.
STORAGE_WAIT_VAR = "LAUNCHER_STORAGE_WAIT_S"
STORAGE_WAIT_IN_JOB_S = 300.0
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})


def storage_wait_s() -> float:
    """How long a write waits for full or read-only storage to recover: $LAUNCHER_STORAGE_WAIT_S, else 300 s inside a
    Slurm job and 0 elsewhere."""
    value = os.environ.get(STORAGE_WAIT_VAR)
    if value:
        return float(value)
    return STORAGE_WAIT_IN_JOB_S if os.environ.get("SLURM_JOB_ID") else 0.0


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one. Full or read-only storage is waited out (above)."""
    deadline: float | None = None
    pause_s = 0.5
    while True:
        try:
            _write_atomic_once(path, data)
            return
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + storage_wait_s()
                if now < deadline:
                    log.warning("%s: %s; waiting up to %.0f s for the storage to recover", path, exc.strerror,
                                deadline - now)
            if now >= deadline:
                raise
            time.sleep(min(pause_s, deadline - now))
            pause_s = min(2 * pause_s, 5.0)


def _write_atomic_once(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: the rename stays atomic
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # on read-only storage it cannot go; the retry reuses its name
            tmp.unlink(missing_ok=True)
        raise


def dumps_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n").encode())


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, "".join(dumps_line(r) for r in rows).encode())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TaskStore:
    """What one task has on shared storage: chunks/, quarantine.jsonl, attempts/, done.json."""

    root: Path

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
    def attempts(self) -> Path:
        return self.root / "attempts"

    def chunk_files(self) -> list[Path]:
        if not self.chunks.is_dir():
            return []
        return sorted(p for p in self.chunks.iterdir() if CHUNK_RE.match(p.name))

    def done_rows(self) -> set[int]:
        """Rows already generated (in whole chunks). Temporary files of a killed writer are ignored."""
        rows: set[int] = set()
        for path in self.chunk_files():
            rows.update(r["row"] for r in read_jsonl(path))
        return rows

    def next_chunk(self, replica: int) -> Path:
        taken = [int(m.group(2)) for p in self.chunk_files()
                 if (m := CHUNK_RE.match(p.name)) and int(m.group(1)) == replica]
        return self.chunks / f"chunk-{replica}-{(max(taken) + 1 if taken else 0):06d}.jsonl"

    def write_chunk(self, replica: int, rows: list[dict[str, Any]]) -> Path:
        path = self.next_chunk(replica)
        write_jsonl_atomic(path, sorted(rows, key=lambda r: r["row"]))
        return path

    def is_done(self) -> bool:
        return self.done_marker.exists()

    def attempt_files(self) -> list[Path]:
        return sorted(self.attempts.glob("attempt-*.json")) if self.attempts.is_dir() else []

    def write_attempt(self, info: dict[str, Any]) -> Path:
        n = len(self.attempt_files())
        path = self.attempts / f"attempt-{n:03d}-{os.getpid()}.json"
        write_json_atomic(path, info)
        return path

    def read_attempts(self) -> list[dict[str, Any]]:
        out = []
        for p in self.attempt_files():
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out


SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str) -> str:
    """A user id as a file name: no '/', no '..', no odd bytes; a short hash keeps changed names unique."""
    clean = SAFE_NAME.sub("_", name)[:100].lstrip(".") or "_"
    if clean != name:
        clean = f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return clean
