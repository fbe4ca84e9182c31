"""cli/console.py: the two consoles every command prints with (results to stdout, messages and errors to stderr), and
the one way text from data and run files reaches them: `printable` for plain text, `safe` inside rich markup
(launcher/terminal.py: control characters, line separators and bidi controls shown as escapes, markup escaped), and
`report` (terminal.py too), the one way a LauncherError reaches the user."""

from __future__ import annotations

import sys

from rich.console import Console

from launcher.terminal import printable, report, safe

console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


__all__ = ["console", "err", "printable", "report", "safe"]
