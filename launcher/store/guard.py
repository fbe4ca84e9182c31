"""store/guard.py: `python -m launcher.store.guard RUN_DIR -- COMMAND...` -> the run folder checked, then COMMAND
exec-ed with the run's logs folder named through the checked descriptor.

submitit's job code loads the job's pickle from <run>/logs/ before any launcher code runs, and a pickle is code. In a
group-writable output folder another member can rename `runs` away and put a folder of theirs in its place, holding
a pickle of theirs. So a job without a container starts here: the run folder is opened without following links and
checked (yours: store/run_dir.py), so is its logs folder, and COMMAND runs with every argument naming the logs folder
replaced by /proc/self/fd/N, the descriptor that was checked: whatever happens to the path afterwards, submitit reads
and writes the folder that was checked. A refused folder ends the task with exit 2 and the reason on stderr (the
task's log). A job in a container starts in containers/shim.py instead, which checks the same before the runtime
starts (a runtime binds folders by path; docs/security.md says what window that leaves).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launcher.errors import LauncherError
from launcher.store.run_dir import RunDir

REFUSED_EXIT = 2


def guarded_argv(run_dir: Path, python: str) -> list[str]:
    """What submitit runs as 'python' for a job of this run without a container (it appends `-u -m ... LOGS`)."""
    return [python, "-m", "launcher.store.guard", str(RunDir(run_dir).root), "--", python]


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1 or len(argv) < 3:
        print("usage: python -m launcher.store.guard RUN_DIR -- COMMAND [ARG...]", file=sys.stderr)
        return REFUSED_EXIT
    run = RunDir(Path(argv[0]))
    command = argv[2:]
    try:
        logs = run.folder("logs")
    except (LauncherError, OSError) as exc:
        print(f"launcher.store.guard: the job was not started: {exc}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    os.set_inheritable(logs.fd, True)  # kept open across exec: /proc/self/fd/N names the checked folder
    checked = f"/proc/self/fd/{logs.fd}"
    command = [checked if arg == str(run.logs) else arg for arg in command]
    try:
        os.execv(command[0], command)
    except OSError as exc:
        print(f"launcher.store.guard: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
