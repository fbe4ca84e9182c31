"""store/kept.py: a run folder a worker holds open -> the folders in it reached from that descriptor, not from
<output.dir> again.

Reaching a folder of the run the checked way (store/fs.py) opens every name from <output.dir> down: runs/, the run,
units/, the unit, claims/. A worker claims, heartbeats and writes all day; on shared storage each open is a round
trip to the file server that every worker shares (docs/scale.md). So a worker opens its run folder once, checked as
always (yours, 0700), and keeps it and the folders right inside it (units/, workers/, jobs/) open for the rest of
the process; below those every name is still opened one at a time without following a link.

Safe because the run folder is 0700 and yours: nobody else can swap what is inside it. A run folder moved away while
its worker runs is written where it now is (never a new one made in its place). Per process: a forked child (or a
process of another run) opens its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from launcher.store.fs import Folder


class KeptRun:
    """One run folder held open, and the folders right inside it as they are first asked for."""

    def __init__(self, root: Folder) -> None:
        self.root = root
        self._tops: dict[str, Folder] = {}
        self._lock = threading.Lock()

    def folder(self, parts: tuple[str, ...], create: bool = False) -> Folder:
        """The folder `parts` below the run's, as RunDir.folder gives it (a new descriptor: the caller closes it)."""
        if not parts:
            return self.root.walk(())
        with self._lock:
            top = self._tops.get(parts[0])
            if top is None:  # FileNotFoundError when missing and not `create`: nothing kept
                top = self._tops[parts[0]] = self.root.child(parts[0], create=create)
        return top.walk(parts[1:], create=create)


_kept: dict[tuple[str, int], KeptRun] = {}
_kept_lock = threading.Lock()


def kept_run(root: Path) -> KeptRun | None:
    """The run folder at `root` if this process keeps it open."""
    return _kept.get((str(root), os.getpid()))


def keep_run(root: Path, open_root: Callable[[], Folder]) -> None:
    """Hold the run folder at `root` open in this process from now on (`open_root` opens it the checked way)."""
    key = (str(root), os.getpid())
    with _kept_lock:
        if key not in _kept:
            _kept[key] = KeptRun(open_root())


__all__ = ["KeptRun", "keep_run", "kept_run"]
