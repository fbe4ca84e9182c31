"""inputs/encodable.py: a parsed dataset row -> where it holds text that UTF-8 cannot encode, if anywhere.

Such text is a lone surrogate (U+D800-U+DFFF): json.loads turns an escaped "\\ud800" into one, and a CSV read with
surrogateescape turns each byte that is not UTF-8 into one (U+DC80-U+DCFF). No output can hold it (samples.jsonl,
samples.parquet and users/*.json are UTF-8) and fast tokenizers refuse it, so the row is quarantined, alone, with
this reason. Every other character (NUL, U+2028, U+0085, astral ones) is fine and round-trips byte for byte.

The walk is iterative: a row nested as deep as its parser allowed is walked without recursion.
"""

from __future__ import annotations

import re
from typing import Any

SURROGATE = re.compile("[\ud800-\udfff]")


def first_unencodable(obj: Any) -> str | None:
    """'field.path: U+D800 at character 3 (...)' for the first string (key or value) holding a lone surrogate."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if m := SURROGATE.search(value):
                return _describe(where or "the row", m.group(), m.start())
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                name = str(key)
                if m := SURROGATE.search(name):
                    return _describe(f"{where}.<key>" if where else "a key", m.group(), m.start())
                stack.append((f"{where}.{name}" if where else name, item))
        elif isinstance(value, (list, tuple)):
            for i in reversed(range(len(value))):
                stack.append((f"{where}[{i}]", value[i]))
    return None


def _describe(where: str, char: str, at: int) -> str:
    code = ord(char)
    origin = (
        "a byte that is not UTF-8 in the file, or a \\udcXX escape"
        if 0xDC80 <= code <= 0xDCFF
        else "a lone surrogate escape in the JSON (\\ud800-\\udfff without its pair)"
    )
    where = where.encode("utf-8", "backslashreplace").decode()[:200]  # the field name may hold one too
    return (
        f"text UTF-8 cannot encode in {where}: U+{code:04X} at character {at} ({origin}); fix the row (a "
        "surrogate pair such as \\ud83d\\ude00 is fine)"
    )


__all__ = ["first_unencodable"]
