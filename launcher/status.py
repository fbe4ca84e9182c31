"""status.py: run dir -> one table: task, Slurm state, records done / total, samples/s, node, retries, last error."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .outputs import TaskStore
from .run_state import load_plan, read_run_json

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "DONE"}


@dataclass
class TaskStatus:
    index: int
    task_id: str
    state: str
    records_done: int
    records_total: int
    samples_per_s: float | None
    node: str | None
    attempts: int
    last_error: str


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str | None, int]]:
    """array element id -> (state, node, restarts) from sacct (covers finished jobs too)."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,NodeList,Restarts"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states: dict[str, tuple[str, str | None, int]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 4:
            states[parts[0]] = (parts[1].split()[0], parts[2] if parts[2] not in {"", "None assigned"} else None,
                                int(parts[3] or 0))
    return states


def collect(run_dir: Path) -> list[TaskStatus]:
    plan = load_plan(run_dir)
    run = read_run_json(run_dir)
    subs = run.get("submissions", [])
    index_of = _submitted_indices(plan, subs)
    states = slurm_states(list(index_of.values()))
    rows = []
    for t in plan.tasks:
        store = TaskStore(plan.paths.task_dir(t))
        done_rows = len(store.done_rows())
        attempts = store.read_attempts()
        jid = index_of.get(t.index)
        state, node, _restarts = states.get(jid, ("", None, 0)) if jid else ("", None, 0)
        if store.is_done():
            state = "DONE"
        elif not state:
            state = "RUNNING?" if done_rows else ("NOT SUBMITTED" if jid is None else "PENDING?")
        rate = None
        reps = [r for a in attempts for r in a.get("replicas", []) if r.get("inference_time_seconds")]
        if reps:
            rate = sum(r["samples"] for r in reps) / max(1e-9, sum(r["inference_time_seconds"] for r in reps))
        rows.append(TaskStatus(t.index, t.task_id, state, done_rows, t.rows, rate,
                               node or next((r.get("host") for r in reversed(reps)), None), len(attempts),
                               _last_error(plan.paths.logs, jid) if state in FINAL - {"COMPLETED", "DONE"} else ""))
    return rows


def _submitted_indices(plan: Any, subs: list[dict[str, Any]]) -> dict[int, str]:
    """task index -> the Slurm array element id of its newest submission."""
    out: dict[int, str] = {}
    for sub in subs:
        ids = sub.get("job_ids", [])
        indices = sub.get("task_indices") or list(range(len(ids)))
        for idx, jid in zip(indices, ids, strict=False):
            out[idx] = jid
    return out


def _last_error(logs: Path, job_id: str | None) -> str:
    if not job_id:
        return ""
    for path in sorted(logs.glob(f"{job_id}_*_log.err")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line or "Killed" in line:
                return line.strip()[:160]
        return lines[-1][:160] if lines else ""
    return ""


def render(rows: list[TaskStatus], title: str) -> Table:
    table = Table(title=title)
    for col in ("#", "task", "state", "records", "samples/s", "node", "attempts", "last error"):
        table.add_column(col)
    for r in rows:
        color = {"DONE": "green", "FAILED": "red", "RUNNING": "yellow"}.get(r.state, "")
        table.add_row(str(r.index), r.task_id, f"[{color}]{r.state}[/]" if color else r.state,
                      f"{r.records_done}/{r.records_total}", f"{r.samples_per_s:.2f}" if r.samples_per_s else "",
                      r.node or "", str(r.attempts), r.last_error)
    return table


def show_status(run_dir: Path, console: Console, watch: bool = False, as_json: bool = False, every_s: float = 3.0) -> int:
    title = f"run {run_dir.name}"
    if as_json:
        print(json.dumps([asdict(r) for r in collect(run_dir)], indent=2))
        return 0
    if not watch:
        console.print(render(collect(run_dir), title))
        return 0
    with Live(render(collect(run_dir), title), console=console, refresh_per_second=1) as live:
        while True:
            rows = collect(run_dir)
            live.update(render(rows, title))
            if all(r.state in FINAL for r in rows):
                return 0
            time.sleep(every_s)


def cancel_run(run_dir: Path, console: Console) -> int:
    run = read_run_json(run_dir)
    ids = sorted({j.split("_")[0] for s in run.get("submissions", []) for j in s.get("job_ids", [])}
                 | {s["gather_job_id"] for s in run.get("submissions", []) if s.get("gather_job_id")})
    if not ids:
        console.print("no Slurm jobs recorded for this run")
        return 0
    subprocess.run(["scancel", *ids], check=False)
    console.print(f"cancelled {', '.join(ids)}; finished records are kept: `launcher submit` the spec again to resume")
    return 0
