"""store/atomic.py: bytes -> a file on shared storage, whole or not at all. Readers see the old file or the new one.

Every file the launcher writes goes through here: to a temporary sibling with a random name created with O_EXCL,
fchmod, fsync, rename (store/fs.py: Folder.write_atomic). Full or read-only storage is waited out inside a job (below).
Where the folder is the store's own (the run, the outputs), the caller passes that owner's `opener`, which reaches it
without following links and checks it is yours.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from launcher.errors import UntrustedFile
from launcher.store.fs import Opener, plain_folder
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


def write_atomic(
    path: Path,
    data: bytes,
    wait_s: float | None = None,
    *,
    mode: int | None = None,
    opener: Opener | None = None,
    durable: bool = True,
) -> None:
    """Readers see the old file or the new one, never half of one. Full or read-only storage is waited out (above)
    for `wait_s` (default: storage_wait_s()); 0 for a best-effort file that must never hold a job up. `mode`: the
    file's mode (default: the folder's, see store/fs.py); `opener`: how the folder is reached and checked (default:
    a folder the user named). `durable` False skips the fsync: for a file rewritten every few seconds (a worker's
    report), which a crash may leave empty (readers take an empty file as missing) and which would otherwise cost
    the file server a flush each time."""
    deadline: float | None = None
    pause_s = 0.5
    while True:
        try:
            with (opener or plain_folder)(path.parent, True) as folder:
                folder.write_atomic(path.name, data, mode, durable=durable)
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


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n").encode()


def write_json_atomic(
    path: Path,
    obj: Any,
    wait_s: float | None = None,
    *,
    mode: int | None = None,
    opener: Opener | None = None,
    durable: bool = True,
) -> None:
    write_atomic(path, json_bytes(obj), wait_s, mode=mode, opener=opener, durable=durable)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]], *, opener: Opener | None = None) -> None:
    """JSONL written whole (store/jsonl.py: one line per object, split on b"\\n" only)."""
    write_atomic(path, encode_lines(rows), opener=opener)


def read_json(path: Path, opener: Opener | None = None) -> dict[str, Any]:
    """A JSON object from a file the launcher wrote; {} when it is missing or unreadable (a reader never crashes on
    a file another process is replacing, or one a crash left empty), or when it is not a plain file of yours
    (logged: someone may have planted it)."""
    try:
        with (opener or plain_folder)(path.parent, False) as folder:  # bytes: UTF-8 whatever the locale
            data = json.loads(folder.read_bytes(path.name))
    except (OSError, ValueError, RecursionError):
        return {}
    except UntrustedFile as exc:
        log.warning("ignored: %s", exc)
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
