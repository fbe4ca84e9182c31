"""terminal.py: text that came from data or run files -> text safe to print on a terminal.

A user id, a dataset name, an error message, a path: any of them may hold an escape sequence (ESC, or its one-byte
C1 form CSI U+009B) that moves the cursor, recolours the screen or retitles the window; a carriage return that
overwrites what was printed before it; a line separator (U+0085, U+2028/2029) that breaks a table row; a bidi
control (U+202A-U+202E, U+2066-U+2069) that shows a name in another order than it has; a lone surrogate that makes
printing raise. Every printer of the `launcher` command (cli/console.py's consoles, status, report, compare, the
`--wait` summary) passes such strings through `printable` (plain text) or `safe` (text inside rich markup), so each
of these characters shows as its escape (``\\x1b``, ``\\u2028``) and prints nothing else.

`report` prints a LauncherError the one way every command does (headline, then where / field / got / allowed / fix),
here and not in cli/ so that `launcher bench` (bench/cli.py) prints its errors the same way without importing cli/,
which imports bench/.

A leaf: everything may import it (submit/ and gather/ print too, and cannot import cli/).
"""

from __future__ import annotations

import re

from launcher.errors import LauncherError

# C0 controls (tab and newline included: a table cell is one line), DEL and C1 (U+0080-U+009F: U+0085 NEL, U+009B
# CSI), the Arabic letter mark and the LRM/RLM marks, U+2028/U+2029, the bidi embeddings/overrides and isolates,
# and surrogates (U+D800-U+DFFF: a lone one cannot be encoded for the terminal).
_OTHERS = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_RE = re.compile(f"[\x00-\x1f{_OTHERS}]")
_UNSAFE_KEEP_NEWLINE_RE = re.compile(f"[\x00-\x09\x0b-\x1f{_OTHERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(value: object, keep_newlines: bool = False) -> str:
    """`value` as text with every control, separator and bidi character shown as its escape. keep_newlines: a
    message of several lines of our own (an error's where / got / fix), whose parts were data."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_KEEP_NEWLINE_RE if keep_newlines else _UNSAFE_RE).sub(_escape_char, text)


def safe(value: object, keep_newlines: bool = False) -> str:
    """`printable`, and rich markup escaped: for data inside a string that rich renders ('[red]x[/]' in a user id
    must show as typed, not recolour what follows)."""
    from rich.markup import escape

    return escape(printable(value, keep_newlines))


def report(exc: LauncherError) -> int:
    """The one way any stage's error reaches the user: headline, then where / field / got / allowed / fix, on stderr;
    returns the error's exit code."""
    from rich.console import Console

    # soft_wrap: messages hold paths and commands to copy, never broken at the terminal's width; safe: a path or a
    # value may hold '[...]' (rich markup) or control characters.
    err = Console(stderr=True, highlight=False)  # as cli/console.py's `err`; made here so importing this stays light
    err.print(f"[red]{safe(exc.headline)}:[/]\n{safe(str(exc), True)}", soft_wrap=True, highlight=False)
    return exc.exit_code


__all__ = ["printable", "report", "safe"]
