"""status.py: run dir -> one table: task, Slurm state, records done / total, samples/s, node, requeues, failures,
last error. And `cancel`.

Two sources, because each lags where the other does not: squeue knows live jobs at once (pending, running, and why
pending) but forgets them when they end; sacct keeps finished jobs but learns of new ones ~5 s late. A task's own
files on shared storage beat both: done.json means DONE whatever Slurm says.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .outputs import TaskStore
from .retries import read_failures
from .run_state import load_plan, read_run_json
from .slurm import task_job_ids

FINAL = {"DONE", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "NOT SUBMITTED"}
COLORS = {"DONE": "green", "FAILED": "red", "RUNNING": "yellow", "CANCELLED": "magenta", "TIMEOUT": "red",
          "OUT_OF_MEMORY": "red", "PENDING": "cyan"}


@dataclass
class JobState:
    state: str  # RUNNING, PENDING, FAILED, ... ("CANCELLED by 0" -> CANCELLED)
    node: str | None
    reason: str  # why pending (JobArrayTaskLimit, JobHeldUser, BeginTime after a requeue, Dependency)


@dataclass
class TaskStatus:
    index: int
    task_id: str
    state: str
    reason: str
    records_done: int
    records_total: int
    samples_per_s: float | None
    node: str | None
    job_id: str | None
    requeues: int  # restarts of the latest job (preemption, time limit, retries)
    failures: int  # failed attempts in the latest submission (each retried until slurm.max_retries)
    last_error: str


@dataclass
class RunStatus:
    run_id: str
    run_dir: str
    tasks: list[TaskStatus]
    gather_job_id: str | None
    gather_state: str | None

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(t.state for t in self.tasks))

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": self.run_dir, "counts": self.counts,
                "gather": {"job_id": self.gather_job_id, "state": self.gather_state},
                "tasks": [asdict(t) for t in self.tasks]}


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


def _run(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def _parse(text: str) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    for line in text.splitlines():
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
    states = _parse(_run(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State,NodeList,Reason"]))
    states.update(_parse(_run(["squeue", "-h", "-r", "-j", ids, "-o", "%i|%T|%N|%r"])))
    return states


def collect(run_dir: Path) -> RunStatus:
    plan = load_plan(run_dir)
    run = read_run_json(run_dir)
    subs = [s for s in run.get("submissions", []) if s.get("executor", "slurm") == "slurm"]
    element_of = _submitted_elements(subs)
    local = {i for s in run.get("submissions", []) if s.get("executor") == "local" for i in s.get("task_indices", [])}
    gather_id = next((s["gather_job_id"] for s in reversed(subs) if s.get("gather_job_id")), None)
    states = slurm_states(task_job_ids(run) + ([gather_id] if gather_id else []))
    rows = [_task_status(plan, t, element_of.get(t.index), states, t.index in local) for t in plan.tasks]
    gather = states.get(gather_id) if gather_id else None
    return RunStatus(plan.spec.run_id, str(run_dir), rows, gather_id,
                     (gather.state if gather else "SUBMITTED") if gather_id else None)


def _task_status(plan: Any, task: Any, jid: str | None, states: dict[str, JobState], local: bool) -> TaskStatus:
    store = TaskStore(plan.paths.task_dir(task))
    done_rows = len(store.done_rows())
    job = states.get(jid) if jid else None
    live = _read_json(store.root / "live.json")
    failures = [f for f in read_failures(store.root) if f.get("submission") == (jid or "").split("_")[0]]
    if store.is_done():
        state, reason = "DONE", ""
    elif job is not None:
        state, reason = job.state, job.reason
    elif jid:  # sacct has not heard of a new job yet (~5 s)
        state, reason = "SUBMITTED", ""
    elif local:  # submitit's local executor: no scheduler to ask
        state, reason = "LOCAL", "started" if done_rows else "submitted"
    else:
        state, reason = "NOT SUBMITTED", ""
    reps = [r for a in store.read_attempts() for r in a.get("replicas", []) if r.get("inference_time_seconds")]
    rate = sum(r["samples"] for r in reps) / max(1e-9, sum(r["inference_time_seconds"] for r in reps)) if reps else None
    fresh_live = live if live and live.get("job_id") == jid else {}
    last_error = failures[-1]["error"] if failures else ""
    if not last_error and state in FINAL - {"DONE", "COMPLETED", "NOT SUBMITTED"}:
        last_error = _last_log_error(plan.paths.logs, jid)
    return TaskStatus(task.index, task.task_id, state, reason, done_rows, task.rows, rate,
                      (job.node if job else None) or fresh_live.get("host"), jid, int(fresh_live.get("restart") or 0),
                      len(failures), last_error[:200])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _submitted_elements(subs: list[dict[str, Any]]) -> dict[int, str]:
    """task index -> the Slurm job (or array element) id of its newest submission."""
    out: dict[int, str] = {}
    for sub in subs:
        ids = sub.get("job_ids", [])
        indices = sub.get("task_indices") or list(range(len(ids)))
        for idx, jid in zip(indices, ids, strict=False):
            out[idx] = jid
    return out


def _last_log_error(logs: Path, job_id: str | None) -> str:
    if not job_id:
        return ""
    from .retries import log_tail

    lines = log_tail(logs / f"{job_id}_0_log.err", 40)
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Killed" in line:
            return line.strip()
    return lines[-1] if lines else ""


def render(status: RunStatus) -> Table:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(status.counts.items()))
    gather = f"; gather job {status.gather_job_id}: {status.gather_state}" if status.gather_job_id else ""
    table = Table(title=f"run {status.run_id}: {counts}{gather}")
    for col in ("#", "task", "state", "records", "samples/s", "node", "job", "requeues", "failures", "last error"):
        table.add_column(col)
    for r in status.tasks:
        color = COLORS.get(r.state, "")
        shown = f"{r.state} ({r.reason})" if r.reason else r.state
        table.add_row(str(r.index), r.task_id, f"[{color}]{shown}[/]" if color else shown,
                      f"{r.records_done}/{r.records_total}", f"{r.samples_per_s:.2f}" if r.samples_per_s else "",
                      r.node or "", r.job_id or "", str(r.requeues), str(r.failures), r.last_error)
    return table


def show_status(run_dir: Path, console: Console, watch: bool = False, as_json: bool = False,
                every_s: float = 3.0) -> int:
    """Exit code 1 when some task has ended without finishing (failed, cancelled, timed out)."""
    if as_json:
        status = collect(run_dir)
        print(json.dumps(status.as_json(), indent=2))
        return _exit_code(status)
    if not watch:
        status = collect(run_dir)
        console.print(render(status))
        return _exit_code(status)
    status = collect(run_dir)
    with Live(render(status), console=console, refresh_per_second=1) as live:
        while not all(r.state in FINAL for r in status.tasks):
            time.sleep(every_s)
            status = collect(run_dir)
            live.update(render(status))
    return _exit_code(status)


def _exit_code(status: RunStatus) -> int:
    return 1 if any(r.state in FINAL - {"DONE", "NOT SUBMITTED"} for r in status.tasks) else 0


def cancel_run(run_dir: Path, console: Console) -> int:
    """scancel every job of the run that Slurm still holds: the task arrays and the gather jobs."""
    run = read_run_json(run_dir)
    gathers = {s["gather_job_id"] for s in run.get("submissions", []) if s.get("gather_job_id")}
    ids = sorted(set(task_job_ids(run)) | gathers, key=int)
    if not ids:
        console.print("no Slurm jobs recorded for this run")
        return 0
    live = sorted(set(_run(["squeue", "-h", "-j", ",".join(ids), "-o", "%F"]).split()), key=int)
    if not live:
        console.print(f"nothing to cancel: every job of this run ({', '.join(ids)}) has ended")
        return 0
    proc = subprocess.run(["scancel", *live], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        console.print(f"scancel {' '.join(live)} failed: {proc.stderr.strip()}")
        return 1
    console.print(f"cancelled {', '.join(live)}; finished records are kept: `launcher submit` the spec again to resume")
    return 0
