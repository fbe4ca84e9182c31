"""gather/stream.py: a cell's rows -> samples.jsonl written as they come (never the whole cell in memory), and the
totals its summary needs.

The file is written to a temporary sibling and hashed on the way; at the end it replaces the old file only when its
bytes differ (a second gather writes nothing), or is dropped when the cell turns out incomplete (nothing written).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from launcher.store import OutputRow, encode_line, sha256_file


class StreamedFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish() or discard()
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> bool:
        """Put the bytes in place; False when the file already held exactly them (then nothing is written)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            same = self.path.stat().st_size == self.size and sha256_file(self.path) == self.sha256
        except OSError:
            same = False
        if same:
            self.tmp.unlink()
            return False
        os.replace(self.tmp, self.path)
        return True

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@dataclass
class RowTotals:
    records: int = 0
    samples: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0

    def add(self, row: OutputRow) -> None:
        self.records += 1
        self.samples += len(row["generated_samples"])
        self.output_tokens += sum(row["sample_tokens"])
        self.prompt_tokens += row["prompt_tokens"]


def jsonl_bytes(row: OutputRow) -> bytes:
    """One samples line, split on b"\\n" only when read back (store/jsonl.py); strict UTF-8, as every chunk is."""
    return encode_line(dict(row))


__all__ = ["RowTotals", "StreamedFile", "jsonl_bytes"]
