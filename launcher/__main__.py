"""__main__.py: `python -m launcher`, so that the CLI runs where no `launcher` script is on PATH (a job inside an
image, the bench's measured processes)."""

from launcher.cli import main

raise SystemExit(main())
