"""cli/console.py: the two consoles every command prints with (results to stdout, messages and errors to stderr), and
the one way text from data and run files reaches them: `printable` for plain text, `safe` inside rich markup
(launcher/terminal.py: control characters, line separators and bidi controls shown as escapes, markup escaped); and
`report`, the one way a LauncherError reaches the user, here beside the console it prints on so that `launcher bench`
(bench/cli.py) prints errors the same way without importing the command's dispatcher (cli/__init__.py)."""

from __future__ import annotations

import sys

from rich.console import Console

from launcher.errors import LauncherError
from launcher.terminal import printable, safe

console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def report(exc: LauncherError) -> int:
    """The one way any stage's error reaches the user: headline, then where / field / got / allowed / fix."""
    # soft_wrap: messages hold paths and commands to copy, never broken at the terminal's width; safe: a path or a
    # value may hold '[...]' (rich markup) or control characters (launcher/terminal.py).
    err.print(f"[red]{safe(exc.headline)}:[/]\n{safe(str(exc), True)}", soft_wrap=True, highlight=False)
    return exc.exit_code


__all__ = ["console", "err", "printable", "report", "safe"]
