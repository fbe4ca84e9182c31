"""gather/stream.py: a cell's rows -> samples.jsonl written as they come (never the whole cell in memory), and the
totals its summary needs.

The file is written through the cell's checked folder (store/outputs.py: out_folder; store/fs.py), opened when the
first row comes: to a temporary with a random name created with O_EXCL | O_NOFOLLOW and output.share's mode (nothing
planted beside it can be written through, and nobody can guess its name to plant one first), hashed on the way. At
the end it is renamed over the final name only when the bytes differ (a second gather writes nothing; a link planted
at the final name is replaced, never followed or read through), or dropped when the cell turns out incomplete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from launcher.errors import UntrustedFile
from launcher.store import Folder, OutputRow, encode_line


class LazyFolder:
    """A folder opened (and made) by `open` on first use, then kept until close(): a cell's folder is made only
    once there is something to write into it."""

    def __init__(self, open_folder: Callable[[], Folder]) -> None:
        self._open = open_folder
        self._folder: Folder | None = None

    def get(self) -> Folder:
        if self._folder is None:
            self._folder = self._open()
        return self._folder

    def close(self) -> None:
        if self._folder is not None:
            self._folder.close()
            self._folder = None


class StreamedFile:
    """`name` in the folder `cell` gives, written row by row (see the module docstring)."""

    def __init__(self, cell: Callable[[], Folder], name: str) -> None:
        self._cell = cell
        self.name = name
        self._folder: Folder | None = None
        self._tmp = ""
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self.size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._folder = self._cell()
            self._tmp, fd = self._folder.new_temp(self.name)  # the share's mode, set with fchmod
            self._file = os.fdopen(fd, "wb")
        return self._file

    def write(self, data: bytes) -> None:
        self._open().write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> bool:
        """Put the bytes in place; False when the file already held exactly them (then nothing is written)."""
        f = self._open()  # no row at all (every one quarantined): an empty file, as the old script wrote
        folder = self._folder
        assert folder is not None
        f.flush()
        os.fsync(f.fileno())
        f.close()
        if self._holds(folder):
            with contextlib.suppress(OSError):
                folder.unlink(self._tmp)
            return False
        try:
            folder.replace(self._tmp, self.name)
        except BaseException:
            self.discard()
            raise
        return True

    def _holds(self, folder: Folder) -> bool:
        """The final name is a plain file of yours with one link holding exactly these bytes (then it gets the
        share's mode, as Folder.same_bytes does). Read without following a link: a link there is not ours."""
        try:
            with folder.open_read(self.name) as f:
                st = os.fstat(f.fileno())
                if st.st_size != self.size or st.st_nlink != 1:
                    return False
                h = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                if h.hexdigest() != self.sha256:
                    return False
                if stat.S_IMODE(st.st_mode) != folder.modes.file:
                    os.fchmod(f.fileno(), folder.modes.file)
                return True
        except (OSError, UntrustedFile):
            return False

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._folder is not None and self._tmp:
            with contextlib.suppress(OSError):
                self._folder.unlink(self._tmp)
            self._tmp = ""


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


__all__ = ["LazyFolder", "RowTotals", "StreamedFile", "jsonl_bytes"]
