"""store/fs.py: a path -> an open folder that is provably yours, and the file operations the store does inside one.

Another member of a group-writable (setgid) folder can rename, replace or plant anything in it: a link at a name we
are about to open, a FIFO, a folder where a file belongs, a hard link to a file of ours. So the store
- opens a folder as a descriptor, one name at a time below its anchor with O_NOFOLLOW, and checks the descriptor it
  got (fstat): what was checked is what is used, with no window between a check and an open;
- opens files relative to that descriptor with O_NOFOLLOW (a planted link is refused, never followed) and O_NONBLOCK
  (a planted FIFO cannot hang a reader), then checks them: a regular file of yours; a file a job decides what to
  run from (`trusted=True`) must also be writable by nobody else and have one link;
- writes a file under a fresh random name created with O_EXCL, sets its mode with fchmod (whatever the umask or a
  setgid parent would give), fsyncs it and renames it over the target: a planted link is replaced, never written
  through, and nobody can guess the temporary name to plant one there first;
- opens the anchor (the output.dir the user named, a file named on the command line) as given: links in that path
  are the user's own choice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, BinaryIO

from launcher.errors import UntrustedFile
from launcher.store.modes import (
    PRIVATE,
    Modes,
    group_modes,
    group_shared,
    in_group,
    plain_modes,
    private_umask,
    share_modes,
    umask,
)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK = os.O_RDWR | os.O_CREAT
NAME_MAX = 255  # bytes in one file name (Linux, NFS, Lustre)
TMP_SUFFIX = ".tmp"
FIX_PLANTED = (
    "check who made it (`ls -la` on its folder); if it is not yours, tell them or your admin; remove or rename it, "
    "then run the command again"
)


def who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def refusal(path: Path, problem: str, fix: str = FIX_PLANTED) -> UntrustedFile:
    return UntrustedFile.one(str(path), "", problem, fix=fix)  # type: ignore[return-value]


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def file_problem(st: os.stat_result, trusted: bool, owned: bool = True) -> str:
    """Why a file may not be used: "" when it may. `trusted`: a job decides what to run from it."""
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a regular file"
    if owned and st.st_uid != os.geteuid():
        return f"belongs to {who(st.st_uid)}, not to you ({who(os.geteuid())})"
    if trusted and st.st_mode & 0o022:
        return f"can be written by its group or by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if trusted and st.st_nlink != 1:
        return f"has {st.st_nlink} hard links: it can be reached (and was maybe planted) under another name"
    return ""


def check_name(folder: Path, name: str) -> str:
    """One file name: not empty, not '.' or '..', no '/' or NUL (those would leave the folder)."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise refusal(folder / name, f"{name!r} is not a plain file name", fix="this is a launcher bug: report it")
    return name


def temp_name(name: str) -> str:
    """A name nobody can guess (64 random bits) beside `name`, within NAME_MAX bytes however long `name` is."""
    stem = os.fsencode(name)[: NAME_MAX - 40].decode("utf-8", "ignore").replace("\0", "") or "x"
    return f".{stem}.{secrets.token_hex(8)}{TMP_SUFFIX}"


class Folder:
    """An open folder: a descriptor, the path it was reached by (for messages), the modes of what is made in it,
    and whether what is in it must be yours (`owned`: the run and the outputs; not a folder the user named)."""

    def __init__(self, fd: int, path: Path, modes: Modes, owned: bool = True) -> None:
        self.fd, self.path, self.modes, self.owned = fd, path, modes, owned

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @classmethod
    def anchor(cls, path: Path, modes: Modes, create: bool = False, owned: bool = False) -> Folder:
        """A folder the user named, links in its path followed (their choice). Created with its parents as
        `mkdir -p` would, the last one with `modes.dir` set explicitly."""
        made = False
        try:
            fd = os.open(path, _DIR)
        except FileNotFoundError:
            if not create:
                raise
            os.makedirs(path.parent, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, modes.dir & 0o777)
                made = True
            fd = os.open(path, _DIR)
        folder = cls(fd, Path(path), modes, owned)
        if made:
            folder.adopt(os.fstat(fd))
        return folder

    def adopt(self, st: os.stat_result) -> None:
        """A folder this process just created: its mode and group as asked, whatever the umask and a setgid parent
        gave (unless someone swapped it meanwhile: then it is not ours, and refused)."""
        if st.st_uid != os.geteuid():
            self.close()
            raise refusal(self.path, f"was replaced as it was created: it belongs to {who(st.st_uid)}")
        gid = self.modes.gid
        chown = gid is not None and st.st_gid != gid and in_group(gid)
        if gid is not None and chown:
            os.fchown(self.fd, -1, gid)
        if chown or stat.S_IMODE(st.st_mode) != self.modes.dir:  # as asked already: no round trip to the server
            os.fchmod(self.fd, self.modes.dir)

    def child(
        self,
        name: str,
        create: bool = False,
        private: bool = False,
        owned: bool | None = None,
        modes: Modes | None = None,
        new: bool = False,
    ) -> Folder:
        """The folder `name` in this one, never reached through a link, and yours when `owned` (default: as this
        folder). `private`: yours and 0700 (a folder of yours left open by an older launcher is closed again). With
        `create` (about to write into it) a folder of yours that its group or others may write loses that write bit:
        what the launcher writes is never writable by anyone else, whatever a umask of 002 made before. `new`: most
        likely missing (a unit never claimed), so it is made first, then opened: one lookup fewer."""
        owned = (self.owned if owned is None else owned) or private
        modes = PRIVATE if private else (modes or self.modes)
        path = self.path / check_name(self.path, name)
        made = create and new and self._mkdir(name, modes)
        try:
            fd = self._open_dir(name, path)
        except FileNotFoundError:
            if not create:
                raise
            made = self._mkdir(name, modes)
            fd = self._open_dir(name, path)
        folder = Folder(fd, path, modes, owned)
        st = os.fstat(fd)
        if made:
            folder.adopt(st)
        elif owned and st.st_uid != os.geteuid():
            folder.close()
            raise refusal(path, f"belongs to {who(st.st_uid)}, not to you ({who(os.geteuid())})")
        elif private and st.st_mode & 0o077:
            os.fchmod(fd, PRIVATE.dir)  # ours, opened by an older launcher or a umask: private again
        elif create and owned and st.st_mode & 0o022:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
        return folder

    def _mkdir(self, name: str, modes: Modes) -> bool:
        try:
            os.mkdir(name, modes.dir & 0o777, dir_fd=self.fd)
            return True
        except FileExistsError:
            return False

    def _open_dir(self, name: str, path: Path) -> int:
        try:
            return os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                st = self.stat(name)
                what = kind_of(st.st_mode) if st else "not a folder"
                raise refusal(path, f"is {what}, where a folder of yours belongs") from None
            raise

    def walk(self, names: Iterable[str], create: bool = False, private: bool = False, new: bool = False) -> Folder:
        """The folder `names` below this one, each step checked as child() does. This folder stays open."""
        here: Folder = self
        for name in names:
            nxt = here.child(name, create=create, private=private, new=new)
            if here is not self:
                here.close()
            here = nxt
        if here is self:  # no names: a second handle on this folder, so that both can be closed
            return Folder(os.dup(self.fd), self.path, self.modes, self.owned)
        return here

    def stat(self, name: str) -> os.stat_result | None:
        """lstat of `name` in this folder (a link is described, not followed); None when there is none."""
        try:
            return os.stat(check_name(self.path, name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def open_read(self, name: str, trusted: bool = False) -> BinaryIO:
        """`name` for reading: never through a link, a regular file, yours when this folder's files must be
        (`owned`), and with `trusted` also writable by nobody else and with one link. UntrustedFile otherwise."""
        path = self.path / check_name(self.path, name)
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refusal(path, "is a symbolic link, where a file of yours belongs") from None
            raise
        problem = file_problem(os.fstat(fd), trusted, self.owned or trusted)
        if problem:
            os.close(fd)
            raise refusal(path, problem)
        return os.fdopen(fd, "rb")

    def read_bytes(self, name: str, trusted: bool = False) -> bytes:
        with self.open_read(name, trusted) as f:
            return f.read()

    def same_bytes(self, name: str, data: bytes, mode: int | None = None) -> bool:
        """True when `name` is a file of yours holding exactly `data` (then it gets `mode` too, e.g. an output an
        older launcher left group-writable); False when it differs, is missing or is not a plain file of yours."""
        try:
            with self.open_read(name) as f:
                st = os.fstat(f.fileno())
                if st.st_size != len(data) or st.st_nlink != 1 or f.read() != data:
                    return False
                wanted = self.modes.file if mode is None else mode
                if stat.S_IMODE(st.st_mode) != wanted:
                    os.fchmod(f.fileno(), wanted)
                return True
        except (OSError, UntrustedFile):
            return False

    def write_atomic(self, name: str, data: bytes, mode: int | None = None, durable: bool = True) -> None:
        """`name` holds `data`, whole or not at all: written to a random new name (O_EXCL), fchmod-ed, fsynced
        (unless not `durable`: a file rewritten every few seconds, store/atomic.py), then renamed over `name` (which
        replaces a planted link instead of writing through it)."""
        tmp, fd = self.new_temp(name, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            self.replace(tmp, name)
        except BaseException:
            with contextlib.suppress(OSError):  # on read-only storage it cannot go
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def new_temp(self, name: str, mode: int | None = None) -> tuple[str, int]:
        """(a random name beside `name`, a descriptor on that new file): created with O_EXCL | O_NOFOLLOW (nothing
        planted there can be written through), its mode set with fchmod. The caller renames it over `name` with
        replace() or unlinks it."""
        check_name(self.path, name)
        for _ in range(3):
            tmp = temp_name(name)
            with contextlib.suppress(FileExistsError):  # 64 random bits taken: only someone planting names
                return tmp, self.create_new(tmp, mode)
        raise refusal(self.path / name, "three random temporary names in a row were taken")

    def replace(self, tmp: str, name: str) -> None:
        """Rename `tmp` over `name` (a link at `name` is replaced, never followed); a folder there is refused."""
        try:
            os.rename(tmp, check_name(self.path, name), src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise refusal(self.path / name, "is a folder, where a file belongs") from None
            raise

    def create_new(self, name: str, mode: int | None = None) -> int:
        """A descriptor on a new file `name` (O_EXCL: FileExistsError when there is one, a link included), its mode
        set with fchmod: a probe, or the start of create_exclusive."""
        fd = os.open(check_name(self.path, name), _NEW, 0o600, dir_fd=self.fd)
        wanted = self.modes.file if mode is None else mode
        if stat.S_IMODE(os.fstat(fd).st_mode) != wanted:  # as asked already (the umask kept 0600): no round trip
            os.fchmod(fd, wanted)
        return fd

    def create_exclusive(self, name: str, data: bytes = b"", mode: int | None = None) -> None:
        """A new file `name` holding `data` (FileExistsError when there is one, a link included): a claim, a marker.
        A write that fails (full storage) removes the file again: never a half-written claim."""
        fd = self.create_new(name, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.fd)
            raise

    def open_lock(self, name: str) -> IO[str]:
        """A lock file (flock) kept open and rewritten in place: created 0600 if missing; checked as open_private."""
        return os.fdopen(self.open_private(name, _LOCK, "the launcher's lock file"), "r+", encoding="utf-8")

    def open_private(self, name: str, flags: int, what: str = "a file of yours") -> int:
        """A descriptor on `name` opened with `flags` (never through a link, never blocking on a FIFO; created 0600
        with O_CREAT): a lock, a log appended to (units.log). Refused (UntrustedFile) when it is a link, not a regular
        file, not yours, or hard-linked (writing it would write the other name's file); made 0600 again when its
        group or others may read it and it is opened for writing."""
        path = self.path / check_name(self.path, name)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refusal(path, f"is a symbolic link, where {what} belongs") from None
            raise
        st = os.fstat(fd)
        problem = file_problem(st, trusted=False) or (f"has {st.st_nlink} hard links" if st.st_nlink != 1 else "")
        if problem:
            os.close(fd)
            raise refusal(path, problem)
        if flags & (os.O_WRONLY | os.O_RDWR) and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
        return fd

    def rename(self, old: str, new: str) -> None:
        os.rename(check_name(self.path, old), check_name(self.path, new), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(check_name(self.path, name), dir_fd=self.fd)


Opener = Callable[[Path, bool], Folder]
"""Opens the folder at a path (creating it when asked) the way its owner in the store checks it."""


def plain_folder(path: Path, create: bool = False) -> Folder:
    """A folder the user named (a report folder, a batch file's folder, ~/.cache): links in its path followed,
    files written with a random temporary name and a mode that lets nobody else write them."""
    return Folder.anchor(path, plain_modes(), create)


def private_folder(path: Path, create: bool = False) -> Folder:
    """A folder named by path (links in its path followed) whose new folders are 0700 and files 0600: claims kept
    outside a run (tests, tools); a run's own are reached through RunDir.folder_at."""
    return Folder.anchor(path, PRIVATE, create)


__all__ = [  # the modes are re-exported: store modules take what they open folders with from here
    "PRIVATE",
    "Folder",
    "Modes",
    "Opener",
    "file_problem",
    "group_modes",
    "group_shared",
    "in_group",
    "plain_folder",
    "plain_modes",
    "private_folder",
    "private_umask",
    "refusal",
    "share_modes",
    "temp_name",
    "umask",
    "who",
]
