"""store/names.py: a user id -> the stem of its file name (users/<stem>.json). Injective: two distinct ids never share
a file, whatever they hold.

    plain ids stay as they are    letters, digits, '.', '_', '-', not starting with '.', at most 120 bytes:
                                  `cham003` -> users/cham003.json, as the old inference_vllm.py wrote it
    anything else is escaped      every other byte of its UTF-8 as %XX, '%' itself included, and a leading '.':
                                  `a/b` -> a%2Fb, `..` -> %2E., `ü` -> %C3%BC, `` -> %  (reversible: unescape_stem)
    long ids are hashed           over 120 bytes once escaped: its first characters, then '%%', then the sha256 of
                                  the id (64 hex digits)

Why it is injective: a plain stem holds no '%'; an escaped stem holds '%' followed by two hex digits each time, so
never '%%'; a hashed stem holds '%%' once and the id's whole sha256. Case is kept: `A` and `a` are two files, as
Linux file systems (and every cluster's shared storage) keep them apart; on a case-insensitive file system (macOS
default, Windows) such two ids would meet; so would the NFC and NFD spellings of one accented id (their bytes differ,
so here they are two ids and two files). Names Windows reserves (CON, NUL) are not special on Linux.
"""

from __future__ import annotations

import hashlib
import re

PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
PLAIN_BYTE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# <stem>.json, and the writer's temporary sibling beside it (a dot, the name, host, pid, thread), must stay within
# the 255 bytes a file name may have.
MAX_STEM_BYTES = 120
HASH_MARK = "%%"


def _utf8(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")  # a lone surrogate still gets its own, distinct bytes


def escape_stem(name: str) -> str:
    """The escaped form (no length limit): plain bytes kept, every other byte (and a leading '.') as %XX."""
    if not name:
        return "%"
    out = []
    for i, byte in enumerate(_utf8(name)):
        keep = byte in PLAIN_BYTE and not (i == 0 and byte == ord("."))
        out.append(chr(byte) if keep else f"%{byte:02X}")
    return "".join(out)


def safe_filename(name: str, reserved: frozenset[str] = frozenset()) -> str:
    """A user id -> a file name stem, injectively (module docstring). `reserved`: stems the folder's own files use
    (`launcher run` writes users beside samples.jsonl and manifest.json): such an id gets its first byte escaped."""
    stem = name if PLAIN.fullmatch(name) else escape_stem(name)
    if stem in reserved:
        stem = f"%{ord(stem[0]):02X}{stem[1:]}"  # a plain first byte escaped: no other id escapes to this
    if len(stem.encode()) > MAX_STEM_BYTES:
        keep = MAX_STEM_BYTES - len(HASH_MARK) - 64
        head = stem[:keep]
        cut = head.rfind("%", len(head) - 2)  # never end inside a %XX
        head = head[:cut] if cut != -1 else head
        stem = f"{head}{HASH_MARK}{hashlib.sha256(_utf8(name)).hexdigest()}"
    return stem


def unescape_stem(stem: str) -> str | None:
    """The user id back from a stem that is not hashed (None for a hashed one: the id is in the file)."""
    if HASH_MARK in stem:
        return None
    if stem == "%":
        return ""
    return re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), stem.encode()).decode(
        "utf-8", "surrogatepass"
    )


__all__ = ["MAX_STEM_BYTES", "escape_stem", "safe_filename", "unescape_stem"]
