"""faults.py: TEST-ONLY fault injection for the live-Slurm tests. Inert unless a LAUNCHER_FAULT_* variable is set.

The runner calls `after_record` once per finished record. The variables travel with the job (sbatch exports the
submitter's environment), so a test sets them on `launcher submit` only:

  LAUNCHER_FAULT_CRASH="<task id>:<times>[:<after records>]"
      that task raises after writing <after records> records (default 1) in each of its first <times> attempts,
      as a bad record that crashes the engine would. Fired crashes are counted in <task dir>/faults/.
  LAUNCHER_FAULT_SLOW_S="<seconds>[:<until restart>]"
      sleep this long after each record, so that a test can kill, preempt or time out a task mid-way; with
      <until restart>, only while SLURM_RESTART_COUNT is below it (later attempts run at full speed).

Nothing here changes what is generated: a record's samples depend only on (seed, record id).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from launcher.slurm_env import SlurmEnv
from launcher.store import UnitDir

CRASH_VAR = "LAUNCHER_FAULT_CRASH"
SLOW_VAR = "LAUNCHER_FAULT_SLOW_S"


class InjectedFault(RuntimeError):
    """Raised by LAUNCHER_FAULT_CRASH: a test's stand-in for an engine crash."""


def after_record(task_id: str, unit: UnitDir | Path, replica: int, records_done: int) -> None:
    slow = os.environ.get(SLOW_VAR)
    if slow:
        seconds, _, until = slow.partition(":")
        if not until or SlurmEnv.current().restart < int(until):
            time.sleep(float(seconds))
    crash = os.environ.get(CRASH_VAR)
    if crash and replica == 0:
        target, times, *after = crash.split(":")
        if target == task_id and records_done >= int(after[0] if after else 1):
            _maybe_crash(task_id, unit if isinstance(unit, UnitDir) else UnitDir(unit), int(times))


def _maybe_crash(task_id: str, unit: UnitDir, times: int) -> None:
    with unit.opener(unit.faults, True) as folder:
        fired = len([n for n in folder.names() if n.startswith("crash-")])
        if fired >= times:
            return
        try:  # O_EXCL: two processes of one task never both count the same crash
            folder.create_exclusive(f"crash-{fired}")
        except FileExistsError:
            return
    raise InjectedFault(f"injected fault ({CRASH_VAR}): task {task_id} crashes, {fired + 1} of {times} time(s)")
