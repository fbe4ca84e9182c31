"""store/modes.py: who may read what the launcher makes -> the modes and group of its folders and files.

The run's state is yours alone (PRIVATE: 0700 folders, 0600 files). The outputs follow `output.share`: "group"
(group_modes: 2750 folders of the shared folder's group, 0640 files), "private", or unset: "group" in a lab's shared
folder (group-writable or setgid), else your umask. Nothing the launcher makes is writable by anyone else: modes are
set with fchmod after creation (store/fs.py), so neither a umask of 002 nor a setgid parent changes them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Modes:
    """The modes of what the launcher creates in a folder: subfolders, files, and the group for new folders."""

    dir: int
    file: int
    gid: int | None = None
    """New folders get this group (the shared parent's) when the user is a member; None: as the system gives."""


PRIVATE = Modes(0o700, 0o600)


def group_modes(gid: int | None = None) -> Modes:
    """Readable by the group, writable by nobody else; setgid so that every folder below keeps the group."""
    return Modes(0o2750, 0o640, gid)


def umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """umask 077 for what runs inside: files that others' code writes into the run folder (submitit's pickles and
    sbatch script; through Slurm's SLURM_UMASK, the job's logs and every file its processes make without a mode)
    are then private too. Process-wide: only around calls that run in the submit's main thread."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def plain_modes() -> Modes:
    """A folder the user named outside the run and the outputs: as the umask says, never writable by others."""
    mask = umask() | 0o022
    return Modes(0o777 & ~mask, 0o666 & ~mask)


def group_shared(path: Path) -> bool:
    """Is `path` (or, while it does not exist, its nearest existing parent) a lab's shared folder: writable by its
    group, or handing its group down to what is created in it (setgid)?"""
    st = nearest_stat(path)
    return st is not None and bool(st.st_mode & (stat.S_IWGRP | stat.S_ISGID))


def share_modes(folder: Path, share: str | None = None) -> Modes:
    """The modes of the outputs made in `folder` (spec output.share): "group" readable by the folder's group alone,
    "private" by you alone; unset: "group" when `folder` is a lab's shared one (group_shared), else as the umask
    says. Never writable by anyone else, whatever the umask (002 included) or a setgid parent would give."""
    if share == "private":
        return PRIVATE
    if share == "group" or group_shared(folder):
        st = nearest_stat(folder)
        return group_modes(st.st_gid if st is not None else None)
    return plain_modes()


def nearest_stat(path: Path) -> os.stat_result | None:
    for p in (path, *path.parents):
        try:
            return os.stat(p)
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def in_group(gid: int) -> bool:
    return gid == os.getegid() or gid in os.getgroups()


__all__ = [
    "PRIVATE",
    "Modes",
    "group_modes",
    "group_shared",
    "in_group",
    "nearest_stat",
    "plain_modes",
    "private_umask",
    "share_modes",
    "umask",
]
