"""The two consoles every command prints with: results to stdout, messages and errors to stderr."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)
