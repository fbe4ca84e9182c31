"""store/cache_entry.py: compiled-graph cache entries on shared storage -> published with a manifest of their files'
hashes; copied into a private folder only when their publisher is trusted and every file matches the manifest.

<cache root>/<key>/                  one entry, published once (a private temporary folder renamed into place)
    MANIFEST.json                     every file's path, size and sha256, every link's target, the publisher
    vllm/ inductor/ triton/ ...       what vLLM, Inductor and Triton wrote
<scratch>/launcher-<uid>/compile/<key>/   this node's private copy, the folder vLLM loads compiled code from
<scratch>/launcher-<uid>/private/         a compile of one's own that is never published

Who is trusted: you, and the users and groups $LAUNCHER_COMPILE_CACHE_TRUST names (`uid:1234,user:alice,group:lab`:
a group trusts every member of it). An entry of anyone else is ignored (logged) and the engine compiles. A trusted
entry is still checked while it is copied: its folders, manifest and files must belong to its publisher and be
writable by nobody else, nothing is reached through a link, a link in the entry may not leave it, and each file's
bytes (read once: what is hashed is what is copied) must match the manifest's sha256. One failure and nothing of the
entry is used. Files in the entry that the manifest does not list are never copied.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import posixpath
import pwd
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from launcher.errors import UntrustedFile
from launcher.store.fs import PRIVATE, Folder, Modes, group_shared, share_modes, who

TRUST_ENV = "LAUNCHER_COMPILE_CACHE_TRUST"
MANIFEST = "MANIFEST.json"
MANIFEST_VERSION = 1
SKIPPED_SUFFIXES = (".lock", ".tmp")  # a node copy's own locks and temporary files are never published
STALE_TMP_S = 6 * 3600  # a temporary entry this old belongs to a process that died while publishing


class CacheRefused(Exception):
    """Why an entry is not used (logged; the engine compiles)."""


class UnsafeCacheFolder(UntrustedFile):
    """The node folder for this user's cache exists but is not provably ours alone."""


@dataclass(frozen=True)
class Trust:
    """Whose published entries are used besides your own."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Trust:
        """$LAUNCHER_COMPILE_CACHE_TRUST: comma-separated `uid:N`, `user:NAME`, `gid:N`, `group:NAME`. An item
        that names nobody is an error (ValueError, with the item): a typo must not quietly trust no one or everyone."""
        text = (os.environ if env is None else env).get(TRUST_ENV, "")
        uids, gids = set(), set()
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            kind, _, value = item.partition(":")
            try:
                if kind == "uid" and value.isdigit():
                    uids.add(int(value))
                elif kind == "user":
                    uids.add(pwd.getpwnam(value).pw_uid)
                elif kind == "gid" and value.isdigit():
                    gids.add(int(value))
                elif kind == "group":
                    gids.add(grp.getgrnam(value).gr_gid)
                else:
                    raise KeyError(item)
            except KeyError:
                raise ValueError(
                    f"{TRUST_ENV}: {item!r} names no user or group here; allowed: uid:N, user:NAME, gid:N, "
                    "group:NAME, separated by commas"
                ) from None
        return cls(frozenset(uids), frozenset(gids))

    def allows(self, uid: int) -> bool:
        if uid == os.geteuid() or uid in self.uids:
            return True
        if not self.gids:
            return False
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return False
        return user.pw_gid in self.gids or any(user.pw_name in _members(g) for g in self.gids)


def _members(gid: int) -> list[str]:
    try:
        return list(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return []


# ---- the scratch folder's layout: this user's, on this node ----------------------------------------------------
def user_folder(scratch: Path) -> Path:
    """<scratch>/launcher-<uid>, created 0700; UnsafeCacheFolder when it is a link, not a folder, not ours, or open
    to others: whoever controls it controls code our engine loads."""
    base = scratch / f"launcher-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.makedirs(scratch, exist_ok=True)
        os.mkdir(base, 0o700)
    st = os.lstat(base)
    problems = []
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        problems.append("is not a plain directory")
    if st.st_uid != os.getuid():
        problems.append(f"belongs to {who(st.st_uid)}, not to us ({os.getuid()})")
    if st.st_mode & 0o077:
        problems.append(f"has mode {stat.S_IMODE(st.st_mode):o} (others may write or read it)")
    if problems:
        raise UnsafeCacheFolder.one(
            str(base),
            "",
            f"{' and '.join(problems)}; the compile cache will not use it (someone else may have planted it)",
            fix="remove it, or set LAUNCHER_SCRATCH to a folder of yours",
        )
    return base


def node_copy(scratch: Path, digest: str) -> Path:
    """This node's private copy of entry `digest`: vLLM loads compiled code from here."""
    return user_folder(scratch) / "compile" / digest


def private_compiles(scratch: Path) -> Path:
    """Where a compile of one's own goes when another process of this node compiles the same key."""
    return user_folder(scratch) / "private"


def entry_path(root: Path, digest: str) -> Path:
    return root / digest


# ---- publishing ------------------------------------------------------------------------------------------------
def publish(source: Path, root: Path, digest: str, info: Mapping[str, Any], share: str | None = None) -> bool:
    """Share the compiled folder `source` (this node's private copy) as <root>/<digest>, with its manifest: copied
    to a private temporary folder with a random name, given the share's modes, then renamed into place. False when
    an entry is there already (another node won)."""
    # The root is an exchange folder: in a lab's shared folder the group may publish into it too (2770); every entry
    # in it is checked on its own before use. Elsewhere it is yours alone.
    root_modes = Modes(0o2770, 0o640) if group_shared(root) else PRIVATE
    with Folder.anchor(root, root_modes, create=True) as top:
        modes = share_modes(root, share)
        if top.exists(digest):
            return False
        _drop_stale(top)
        tmp = f".{digest}.{secrets.token_hex(8)}.tmp"
        os.mkdir(tmp, 0o700, dir_fd=top.fd)
        try:
            with Folder.anchor(source, PRIVATE) as src, top.child(tmp, owned=True, modes=modes) as dst:
                files: dict[str, dict[str, Any]] = {}
                links: dict[str, str] = {}
                _copy_out(src, dst, PurePosixPath(), files, links, modes)
                manifest = {
                    "version": MANIFEST_VERSION,
                    "publisher_uid": os.geteuid(),
                    "published": time.time(),
                    "files": files,
                    "links": links,
                    **dict(info),
                }
                text = json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"
                dst.write_atomic(MANIFEST, text.encode())
                dst.adopt(os.fstat(dst.fd))
            os.rename(tmp, digest, src_dir_fd=top.fd, dst_dir_fd=top.fd)
            return True
        except OSError:
            _remove_tree(top, tmp)
            if top.exists(digest):
                return False  # another publisher's rename won
            raise


def _copy_out(
    src: Folder, dst: Folder, rel: PurePosixPath, files: dict[str, dict[str, Any]], links: dict[str, str], modes: Modes
) -> None:
    for name in src.names():
        if name.endswith(SKIPPED_SUFFIXES) or (not rel.parts and name in (MANIFEST, "READY.json")):
            continue
        st = src.stat(name)
        if st is None:
            continue
        here = str(rel / name)
        if stat.S_ISLNK(st.st_mode):
            links[here] = os.readlink(name, dir_fd=src.fd)
            os.symlink(links[here], name, dir_fd=dst.fd)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dst.fd)
            with src.child(name) as s, dst.child(name, modes=modes) as d:
                _copy_out(s, d, rel / name, files, links, modes)
                d.adopt(os.fstat(d.fd))
        elif stat.S_ISREG(st.st_mode):
            data = src.read_bytes(name)
            dst.write_atomic(name, data, modes.file)
            files[here] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _drop_stale(top: Folder) -> None:
    now = time.time()
    for name in top.names():
        if name.startswith(".") and name.endswith(".tmp"):
            st = top.stat(name)
            if st is not None and st.st_uid == os.geteuid() and now - st.st_mtime > STALE_TMP_S:
                _remove_tree(top, name)


def _remove_tree(parent: Folder, name: str) -> None:
    """Remove `name` below `parent` without following a link anywhere in it (shutil.rmtree by dir_fd)."""
    import shutil

    with contextlib.suppress(OSError):
        shutil.rmtree(name, dir_fd=parent.fd)


# ---- copying in ------------------------------------------------------------------------------------------------
def copy_in(root: Path, digest: str, dest: Path, trust: Trust) -> None:
    """Copy the entry <root>/<digest> into `dest` (a path in this user's private folder, replaced whole), verified as
    the module docstring says. CacheRefused (with the reason) when the entry is missing or may not be used."""
    try:
        top = Folder.anchor(root, PRIVATE)
    except OSError as exc:
        raise CacheRefused(f"no cache root {root} ({exc.strerror})") from None
    with top:
        st = top.stat(digest)
        if st is None:
            raise CacheRefused("no entry yet")
        publisher = st.st_uid
        if not trust.allows(publisher):
            raise CacheRefused(f"published by {who(publisher)}, who is not trusted (set {TRUST_ENV} to trust them)")
        try:
            entry = top.child(digest, owned=False)
        except UntrustedFile as exc:
            raise CacheRefused(exc.first.message) from None
        with entry:
            _check_folder(entry, publisher)
            manifest = _read_manifest(entry, publisher)
            with Folder.anchor(dest.parent, PRIVATE, create=True) as parent:
                tmp = f".{dest.name}.{secrets.token_hex(8)}.tmp"
                os.mkdir(tmp, 0o700, dir_fd=parent.fd)
                try:
                    with parent.child(tmp, private=True) as out:
                        _copy_verified(entry, out, manifest, publisher)
                    _remove_tree(parent, dest.name)
                    os.rename(tmp, dest.name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
                except BaseException:
                    _remove_tree(parent, tmp)
                    raise


def _check_folder(folder: Folder, publisher: int) -> None:
    st = os.fstat(folder.fd)
    if st.st_uid != publisher:
        raise CacheRefused(f"{folder.path} belongs to {who(st.st_uid)}, not to the entry's publisher")
    if st.st_mode & 0o022:
        raise CacheRefused(f"{folder.path} can be written by its group or others (mode {stat.S_IMODE(st.st_mode):o})")


def _read_manifest(entry: Folder, publisher: int) -> dict[str, Any]:
    try:
        with entry.open_read(MANIFEST) as f:
            st = os.fstat(f.fileno())
            if st.st_uid != publisher or st.st_mode & 0o022 or st.st_nlink != 1:
                raise CacheRefused(f"{entry.path / MANIFEST} is not the publisher's alone (owner, mode or links)")
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise CacheRefused("no MANIFEST.json (published by an older launcher, or not published whole)") from None
    except (UntrustedFile, ValueError) as exc:
        raise CacheRefused(f"{entry.path / MANIFEST} unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise CacheRefused(f"{entry.path / MANIFEST}: manifest version {manifest.get('version')!r} not understood")
    return manifest


def _parts(rel: str) -> list[str]:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CacheRefused(f"manifest names {rel!r}, which is not a path inside the entry")
    return list(parts)


def _copy_verified(entry: Folder, out: Folder, manifest: dict[str, Any], publisher: int) -> None:
    for rel, want in sorted((manifest.get("files") or {}).items()):
        *dirs, name = _parts(rel)
        with _folders(entry, dirs, publisher) as src, out.walk(dirs, create=True) as dst:
            data = _read_file(src, name, publisher)
            if hashlib.sha256(data).hexdigest() != want.get("sha256"):
                raise CacheRefused(f"{src.path / name} does not match the manifest's sha256 (changed since published)")
            dst.write_atomic(name, data, 0o600)
    for rel, target in sorted((manifest.get("links") or {}).items()):
        *dirs, name = _parts(rel)
        resolved = posixpath.normpath(posixpath.join(*dirs, target)) if dirs else posixpath.normpath(target)
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise CacheRefused(f"the link {rel} -> {target} leaves the entry")
        with out.walk(dirs, create=True) as dst:
            os.symlink(target, name, dir_fd=dst.fd)


@contextlib.contextmanager
def _folders(entry: Folder, names: list[str], publisher: int) -> Iterator[Folder]:
    here = entry.walk(())
    try:
        for name in names:
            try:
                nxt = here.child(name, owned=False)
            except UntrustedFile as exc:
                raise CacheRefused(f"{exc.first.where} {exc.first.message}") from None
            here.close()
            here = nxt
            _check_folder(here, publisher)
        yield here
    finally:
        here.close()


def _read_file(folder: Folder, name: str, publisher: int) -> bytes:
    try:
        with folder.open_read(name) as f:
            st = os.fstat(f.fileno())
            if st.st_uid != publisher:
                raise CacheRefused(f"{folder.path / name} belongs to {who(st.st_uid)}, not to the entry's publisher")
            if st.st_mode & 0o022:
                raise CacheRefused(f"{folder.path / name} can be written by its group or others")
            return f.read()
    except FileNotFoundError:
        raise CacheRefused(f"{folder.path / name} is in the manifest but missing") from None
    except UntrustedFile as exc:
        raise CacheRefused(f"{exc.first.where} {exc.first.message}") from None


__all__ = [
    "MANIFEST",
    "TRUST_ENV",
    "CacheRefused",
    "Trust",
    "UnsafeCacheFolder",
    "copy_in",
    "entry_path",
    "node_copy",
    "private_compiles",
    "publish",
    "user_folder",
]
