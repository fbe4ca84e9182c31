"""store/jsonl.py: JSON objects <-> JSONL bytes, split on b"\\n" only. The one reader and writer of every JSONL file the
launcher writes and reads back: chunks, quarantine, gathered samples, batch output.

Why not `str.splitlines()` or a text-mode file: JSON leaves U+0085, U+2028 and U+2029 unescaped inside strings
(json.dumps with ensure_ascii=False), and `splitlines()` breaks a line at each of them (and at \\x1c-\\x1e, \\v, \\f,
\\r); a text-mode file translates \\r. One such character in a sample cut a record in two and lost a whole run at
gather. Bytes split on b"\\n" are exact: json.dumps escapes every control character, so a raw b"\\n" only ever ends
a line.

Text that UTF-8 cannot encode (a lone surrogate such as "\\ud800", which json.loads accepts from an escaped dataset
line) raises UnicodeEncodeError in `encode_line`: the caller quarantines that record, never the unit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from launcher.store.fs import Opener, plain_folder


def dumps_line(obj: dict[str, Any]) -> str:
    """One JSONL line (with its b"\\n"): UTF-8 text unescaped, keys sorted, no spaces; control characters escaped."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"


def encode_line(obj: dict[str, Any], lone_surrogates: Literal["raise", "escape"] = "raise") -> bytes:
    """dumps_line as UTF-8 bytes. A lone surrogate raises UnicodeEncodeError ("raise": what a chunk or samples file
    must never hold), or ("escape") is written as the JSON escape \\ud800 on that line alone, which json.loads
    turns back into exactly the same string (for what only reports a bad record: quarantine, batch error lines)."""
    try:
        return dumps_line(obj).encode("utf-8")
    except UnicodeEncodeError:
        if lone_surrogates == "raise":
            raise
        return (json.dumps(obj, ensure_ascii=True, sort_keys=True, separators=(",", ":")) + "\n").encode()


def encode_lines(rows: Iterable[dict[str, Any]], lone_surrogates: Literal["raise", "escape"] = "raise") -> bytes:
    return b"".join(encode_line(r, lone_surrogates) for r in rows)


class BadLine(ValueError):
    """A line of a launcher-written JSONL file that is not a JSON object: names the file and the line."""


def split_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) of every non-blank line, split on b"\\n" only."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def parse_lines(data: bytes, where: str = "<bytes>") -> Iterator[dict[str, Any]]:
    """The JSON objects of JSONL bytes. BadLine (file:line, what is wrong) for a line that is not one."""
    for number, line in split_lines(data):
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadLine(f"{where}:{number}: not a JSON line ({type(exc).__name__}: {exc})"[:500]) from None
        if not isinstance(obj, dict):
            raise BadLine(f"{where}:{number}: a JSON {type(obj).__name__}, not an object")
        yield obj


def read_jsonl(path: Path, opener: Opener | None = None) -> Iterator[dict[str, Any]]:
    """Every object of a JSONL file the launcher wrote (read whole: these files are written whole, atomically), never
    reached through a link at its own name nor a FIFO (store/fs.py). `opener`: how its folder is reached and checked
    (a cell of the outputs must be yours: OutputDir.opener); default, a folder the user named."""
    path = Path(path)
    with (opener or plain_folder)(path.parent, False) as folder:
        data = folder.read_bytes(path.name)
    return parse_lines(data, str(path))


__all__ = ["BadLine", "dumps_line", "encode_line", "encode_lines", "parse_lines", "read_jsonl", "split_lines"]
