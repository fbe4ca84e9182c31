"""bench/op_count.py: counts the file-system metadata operations a process makes under one folder (the run
directory), by kind and by phase, from inside the process: an audit hook (sys.addaudithook) sees every open, mkdir,
listdir/scandir (of a path or of a folder's descriptor), rename/replace, unlink, utime, chmod and chown (of a
descriptor too) and fcntl lock; stat, which raises no audit event, and fsync are wrapped. Each of these is at least
one round trip to the file server on NFS or Lustre when its answer is not cached (fstat on a file just opened is
not counted: the open brought its attributes); reads and writes of file data are not counted.

The phase is per thread: `phase("claim")` around a worker's claim, else the thread's name (the chunk writer, the
heartbeat). /proc and every path outside the folder are not counted. For benchmarks and tests: install() is for
good in this process (audit hooks cannot be removed).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# audit event -> (kind, index of the path argument)
EVENTS = {
    "open": ("open", 0),
    "os.mkdir": ("mkdir", 0),
    "os.listdir": ("listdir", 0),
    "os.scandir": ("listdir", 0),
    "os.rename": ("rename", 0),
    "os.remove": ("unlink", 0),
    "os.rmdir": ("rmdir", 0),
    "os.utime": ("utime", 0),
    "os.chmod": ("chmod", 0),
    "os.chown": ("chown", 0),
    "os.link": ("link", 0),
    "os.symlink": ("symlink", 1),
    "os.truncate": ("truncate", 0),
}
LOCK_EVENTS = ("fcntl.lockf", "fcntl.flock")
FD_KINDS = frozenset({"listdir", "chmod", "chown"})  # a round trip to the file server on a descriptor too


class OpCounter:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root).rstrip("/") + "/"
        self.counts: dict[str, Counter[str]] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def _phase(self) -> str:
        return getattr(self._local, "phase", None) or threading.current_thread().name

    def count(self, kind: str) -> None:
        phase = self._phase()
        with self._lock:
            self.counts.setdefault(phase, Counter())[kind] += 1

    def _mine(self, path: Any, fd_counts: bool = False) -> bool:
        if isinstance(path, int):  # an fd: os.fdopen (its open was counted), or listdir/fchmod of an open folder or
            return fd_counts  # file, which only the store does in a worker (store/fs.py: Folder.names, adopt)
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if not isinstance(path, str):
            return False
        # relative: opened from a folder descriptor (dir_fd), which only the store does in a worker
        return path.startswith(self.root) or path + "/" == self.root or not os.path.isabs(path)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        spec = EVENTS.get(event)
        if spec is not None:
            kind, i = spec
            if len(args) > i and self._mine(args[i], fd_counts=kind in FD_KINDS):
                self.count(kind)
        elif event in LOCK_EVENTS:
            self.count("lock")

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = getattr(self._local, "phase", None)
        self._local.phase = name
        try:
            yield
        finally:
            self._local.phase = before

    def total(self, phase: str | None = None) -> int:
        with self._lock:
            if phase is not None:
                return sum(self.counts.get(phase, Counter()).values())
            return sum(sum(c.values()) for c in self.counts.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {p: dict(c) for p, c in self.counts.items()}


def install(root: str) -> OpCounter:
    """Count from now on, in this process, every metadata operation under `root`."""
    counter = OpCounter(root)
    sys.addaudithook(counter._hook)
    real_stat, real_lstat, real_fsync = os.stat, os.lstat, os.fsync

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if counter._mine(path):
            counter.count("stat")
        return real_stat(path, *args, **kwargs)

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if counter._mine(path):
            counter.count("stat")
        return real_lstat(path, *args, **kwargs)

    def fsync(fd: Any) -> None:
        counter.count("fsync")
        real_fsync(fd)

    os.stat, os.lstat, os.fsync = stat, lstat, fsync
    return counter


__all__ = ["OpCounter", "install"]
