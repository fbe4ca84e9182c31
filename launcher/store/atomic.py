"""store/atomic.py: bytes -> a file on shared storage, whole or not at all. Readers see the old file or the new one.

Every file the launcher writes goes through here: to a temporary sibling, fsync, rename. Full or read-only storage
is waited out inside a job (below).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from launcher.store.jsonl import encode_lines

log = logging.getLogger("launcher.store")


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
    from launcher.slurm_env import SlurmEnv

    return STORAGE_WAIT_IN_JOB_S if SlurmEnv.current().in_job else 0.0


def write_atomic(path: Path, data: bytes, wait_s: float | None = None, durable: bool = True) -> None:
    """Readers see the old file or the new one, never half of one. Full or read-only storage is waited out (above)
    for `wait_s` (default: storage_wait_s()); 0 for a best-effort file that must never hold a job up. `durable`
    False skips the fsync: for a file rewritten every few seconds (a worker's report), which a crash may leave
    empty (readers take an empty file as missing) and which would otherwise cost the file server a flush each time."""
    deadline: float | None = None
    pause_s = 0.5
    # Unique per writer: two hosts may share a pid, and shared storage is shared by both. One name per call, so a
    # retry after a read-only spell reuses it.
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    while True:
        try:
            _write_atomic_once(path, tmp, data, durable)
            return
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + (storage_wait_s() if wait_s is None else wait_s)
                if now < deadline:
                    log.warning(
                        "%s: %s; waiting up to %.0f s for the storage to recover", path, exc.strerror, deadline - now
                    )
            if now >= deadline:
                raise
            time.sleep(min(pause_s, deadline - now))
            pause_s = min(2 * pause_s, 5.0)


def _write_atomic_once(path: Path, tmp: Path, data: bytes, durable: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # tmp is in the same folder: the rename stays atomic
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # on read-only storage it cannot go; the retry reuses its name
            tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any, wait_s: float | None = None, durable: bool = True) -> None:
    data = (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n").encode()
    write_atomic(path, data, wait_s, durable)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, encode_lines(rows))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file the launcher wrote; {} when it is missing or unreadable (a reader never crashes on
    a file another process is replacing, or one a crash left empty)."""
    try:
        data = json.loads(path.read_bytes())  # bytes: UTF-8 whatever the locale, no newline translation
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
