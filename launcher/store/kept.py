"""store/kept.py: a run folder a worker (or a gather, while it runs) holds open -> the folders in it reached from
that descriptor, not from <output.dir> again.

Reaching a folder of the run the checked way (store/fs.py) opens every name from <output.dir> down: runs/, the run,
units/, the unit, claims/. A worker claims, heartbeats and writes all day, and a gather visits every unit; on shared
storage each open is a round trip to the file server that every worker shares (docs/scale.md). So they open the run
folder once, checked as always (yours, 0700), and keep it open (a worker for the rest of its process, a gather until
it ends), with the folders below it used last (each reached one name at a time without following a link, as always,
the first time).

Safe because the run folder is 0700 and yours: nobody else can swap what is inside it. A run folder moved away while
its worker runs is written where it now is (never a new one made in its place). Per process: a forked child (or a
process of another run) opens its own.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from launcher.store.fs import Folder


class KeptRun:
    """One run folder held open, and the LIMIT folders below it asked for most recently (a worker's units, their
    claims/ and chunks/, workers/, jobs/<index>/)."""

    LIMIT = 64

    def __init__(self, root: Folder) -> None:
        self.root = root
        self._open: OrderedDict[tuple[str, ...], Folder] = OrderedDict()
        self._lock = threading.Lock()

    def folder(self, parts: tuple[str, ...], create: bool = False) -> Folder:
        """The folder `parts` below the run's, as RunDir.folder gives it (a new descriptor: the caller closes it).
        FileNotFoundError when it is missing and not `create` (then nothing is kept)."""
        with self._lock:
            here, depth = self.root, 0
            for k in range(len(parts), 0, -1):  # the deepest folder on the way that is open already
                if (found := self._open.get(parts[:k])) is not None:
                    self._open.move_to_end(parts[:k])
                    here, depth = found, k
                    break
            for k in range(depth + 1, len(parts) + 1):  # the rest one name at a time, as store/fs.py does
                here = self._open[parts[:k]] = here.child(parts[k - 1], create=create)
            while len(self._open) > max(self.LIMIT, len(parts)):
                self._open.popitem(last=False)[1].close()
            return here.walk(())

    def close(self) -> None:
        with self._lock:
            for folder in self._open.values():
                folder.close()
            self._open.clear()
            self.root.close()


_kept: dict[tuple[str, int], KeptRun] = {}
_kept_lock = threading.Lock()


def kept_run(root: Path) -> KeptRun | None:
    """The run folder at `root` if this process keeps it open."""
    return _kept.get((str(root), os.getpid()))


def keep_run(root: Path, open_root: Callable[[], Folder]) -> Holding:
    """Hold the run folder at `root` open in this process from now on (`open_root` opens it the checked way); or, used
    as a context manager, until its end (a gather): then what this call opened is closed again."""
    key = (str(root), os.getpid())
    with _kept_lock:
        made = key not in _kept
        if made:
            _kept[key] = KeptRun(open_root())
    return Holding(key if made else None)


class Holding:
    def __init__(self, key: tuple[str, int] | None) -> None:
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if self.key is None:
            return
        with _kept_lock:
            kept = _kept.pop(self.key, None)
        if kept is not None:
            kept.close()


__all__ = ["Holding", "KeptRun", "keep_run", "kept_run"]
