"""submit/slurm_query.py: what the login side asks Slurm about a run, in one call per command for the whole run.

- active_jobs(run.json) -> which of the array ids of every submission (RunRecord.task_job_ids: a run of more jobs
  than the cluster's MaxArraySize is submitted as several arrays, one run to status, cancel and wait) Slurm still
  holds: one `squeue` for all of them, however many tasks they have (as submitit's own watcher asks sacct once, by
  array id, for every job it follows);
- max_array_size() -> the cluster's MaxArraySize (`scontrol show config`), which decides how the jobs are split;
- slurm_states(ids) -> each job's or element's state: one sacct and one squeue call for all of them (status).

Light on purpose: `launcher status` imports it, and must answer in well under 2 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.store import RunRecord

MAX_ARRAY_VAR = "LAUNCHER_SLURM_MAX_ARRAY_SIZE"  # a submit-side override (tests; a site whose limit is lower for you)
_MAX_ARRAY_RE = re.compile(r"^MaxArraySize\s*=\s*(\d+)", re.MULTILINE)


def max_array_size() -> int | None:
    """The most elements one array may have (array indices run 0..MaxArraySize-1), from $LAUNCHER_SLURM_MAX_ARRAY_SIZE
    or `scontrol show config`; None when neither says (then one array, as before)."""
    value = os.environ.get(MAX_ARRAY_VAR)
    if value:
        return max(1, int(value))
    if not shutil.which("scontrol"):
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _MAX_ARRAY_RE.search(out.stdout) if out.returncode == 0 else None
    return int(m.group(1)) if m else None


def array_slices(jobs: int, limit: int | None) -> list[range]:
    """Job indices 0..jobs-1 cut into arrays of at most `limit` elements (one array when limit is None)."""
    if jobs <= 0:
        return []
    size = jobs if limit is None else max(1, limit)
    return [range(start, min(jobs, start + size)) for start in range(0, jobs, size)]


def active_jobs(run: RunRecord) -> list[str]:
    """Task jobs of the run that Slurm still holds (pending, running, requeued, completing): one squeue call."""
    ids = run.task_job_ids()
    if not ids or not shutil.which("squeue"):
        return []
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.split() if out.returncode == 0 else []  # 1: none of the ids is known any more


@dataclass
class JobState:
    state: str  # RUNNING, PENDING, FAILED, ... ("CANCELLED by 0" -> CANCELLED)
    node: str | None
    reason: str  # why pending (JobArrayTaskLimit, JobHeldUser, BeginTime after a requeue, Dependency)


def _expand(job_id: str) -> list[str]:
    """sacct shows a pending array's rest as one row, 12_[4-11%12]: one id per element."""
    from submitit.slurm.slurm import read_job_id

    try:
        parts = read_job_id(job_id)
    except (ValueError, AttributeError):
        return [job_id]
    out = []
    for part in parts:
        if len(part) == 3:
            out += [f"{part[0]}_{i}" for i in range(int(part[1]), int(part[2]) + 1)]
        else:
            out.append("_".join(part))
    return out


def run_slurm(cmd: list[str]) -> str:
    """A Slurm command's stdout; empty when it is missing, fails or hangs."""
    if not shutil.which(cmd[0]):
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def _parse(text: str) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    for line in text.split("\n"):  # not splitlines(): a field (a reason) could hold U+2028 or \x1c
        parts = line.split("|")
        if len(parts) < 4 or "." in parts[0]:  # job steps (123.batch) are not tasks
            continue
        node = parts[2] if parts[2] not in {"", "None assigned", "(null)"} else None
        reason = "" if parts[3] in {"None", "(null)"} else parts[3]
        for jid in _expand(parts[0]):
            states[jid] = JobState(parts[1].split()[0] if parts[1] else "UNKNOWN", node, reason)
    return states


def slurm_states(job_ids: list[str]) -> dict[str, JobState]:
    """Job or array element id -> state: sacct for the record, squeue on top for what is live now."""
    if not job_ids:
        return {}
    ids = ",".join(job_ids)
    states = _parse(run_slurm(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State,NodeList,Reason"]))
    states.update(_parse(run_slurm(["squeue", "-h", "-r", "-j", ids, "-o", "%i|%T|%N|%r"])))
    return states


__all__ = [
    "MAX_ARRAY_VAR",
    "JobState",
    "active_jobs",
    "array_slices",
    "max_array_size",
    "run_slurm",
    "slurm_states",
]
