"""submit/status.py: run dir -> the run's worker jobs (Slurm state, node, requeues, last error), their workers (GPUs,
the unit each holds, records, rate) and its units (done, running, pending, failed), plus the run's wall-clock figures:
the data behind `launcher status`, apart from how it is shown (status_view.py).

Two sources, because each lags where the other does not: squeue knows live jobs at once (pending, running, and why
pending) but forgets them when they end; sacct keeps finished jobs but learns of new ones ~5 s late. Each is asked
once for every job of the run (all its arrays), never once per task. The run directory beats both for the work
itself: a unit's done.json means DONE whatever Slurm says.

Units are read from the run's units.log (store/unit_log.py), not folder by folder: a unit the log says is done at its
first claim is DONE, one it never names is PENDING, one at its first claim that its worker's live report lists is
RUNNING (with the records that report counts); only the others (given back, failed, reclaimed, a worker gone quiet)
are looked at on disk. A run planned before units.log existed is read folder by folder.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.plan import Plan
from launcher.plan.persist import load_plan, resume_hint
from launcher.store import RunDir, WorkerReport, of_submission
from launcher.store.claims import lease_s
from launcher.store.unit_log import UnitView
from launcher.submit.slurm_query import JobState, slurm_states

UNITS_SHOWN = 30

FINAL = {
    "DONE",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "NOT SUBMITTED",
    "INTERRUPTED",
}
COLORS = {
    "DONE": "green",
    "FAILED": "red",
    "RUNNING": "yellow",
    "CANCELLED": "magenta",
    "TIMEOUT": "red",
    "OUT_OF_MEMORY": "red",
    "PENDING": "cyan",
}


@dataclass
class JobStatus:
    index: int  # the array element (worker job)
    state: str
    reason: str
    node: str | None
    job_id: str | None
    requeues: int  # restarts of the latest job (preemption, time limit, retries)
    failures: int  # failed attempts in the latest submission (each retried until slurm.max_retries)
    last_error: str


@dataclass
class WorkerStatus:
    worker: str  # <job>.<replica>, and :<model> in a models: sweep
    host: str
    gpus: list[str]
    state: str  # starting, loading, running, done, idle, preempted, failed, lost (no heartbeat)
    units: list[str]  # what it holds now
    units_done: int
    records: int
    samples: int
    samples_per_s: float | None  # its own rate over its generation window
    restart: int
    error: str


@dataclass
class UnitStatus:
    unit_id: str
    state: str  # DONE, RUNNING, PENDING, FAILED
    records_done: int
    records_total: int
    owner: str  # the worker running it
    failures: int
    last_error: str
    cell: str = ""  # [model/|adapter/]dataset/ablation: the output group it belongs to


@dataclass
class RunStatus:
    run_id: str
    run_dir: str
    jobs: list[JobStatus]
    workers: list[WorkerStatus]
    units: list[UnitStatus]
    gather_job_id: str | None
    gather_state: str | None
    run_figures: dict[str, Any]
    warnings: list[str]  # requests not honoured (a TP size, a backend), from the workers

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(u.state for u in self.units))

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "counts": self.counts,
            "gather": {"job_id": self.gather_job_id, "state": self.gather_state},
            "run": self.run_figures,
            "warnings": self.warnings,
            "jobs": [asdict(j) for j in self.jobs],
            "workers": [asdict(w) for w in self.workers],
            "units": [asdict(u) for u in self.units],
        }


def collect(run_dir: Path) -> RunStatus:
    plan = load_plan(run_dir)
    run = plan.run.read_run()
    subs = run.on_slurm()
    element_of = {index: jid for sub in subs for index, jid in sub.elements()}  # each job's newest submission
    latest = run.latest
    gather_id = next((s.gather_job_id for s in reversed(subs) if s.gather_job_id), None)
    states = slurm_states(run.task_job_ids() + ([gather_id] if gather_id else []))
    local = latest.executor == "local"
    from launcher.gather.throughput import run_figures

    figures = run_figures(plan)  # every worker's report, read once
    reports = _latest_reports(figures.workers)
    units = unit_statuses(plan, plan.run.unit_view(), latest.submission, figures.workers)
    all_done = all(u.state == "DONE" for u in units)
    jobs = [
        _job_status(plan, i, element_of.get(i), states, local, reports, all_done, latest.submission)
        for i in range(latest.jobs)
    ]
    workers = [_worker_status(r) for r in reports.values()]
    gather = states.get(gather_id) if gather_id else None
    return RunStatus(
        plan.run.run_id,
        str(run_dir),
        jobs,
        workers,
        units,
        gather_id,
        (gather.state if gather else "SUBMITTED") if gather_id else None,
        figures.headline(),
        run_warnings(plan, figures.workers),
    )


def unit_statuses(
    plan: Plan, view: UnitView, submission: str | None, reports: list[WorkerReport] | None = None
) -> list[UnitStatus]:
    """Every unit's state, from units.log where it is enough (see the module docstring), else from its folder. A
    unit at its first claim that its holder's live report lists as its own is RUNNING, with the records that report
    counts: at 10,000 workers that is 10,000 folders not read."""
    out = []
    labels = {cell: cell.label for cell in {u.cell for u in plan.units}}
    running = _running_units(reports or [], plan.spec.data.num_samples)
    for unit in plan.units:
        uid = unit.unit_id
        held = view.holder.get(uid)
        if view.complete and uid in view.done and view.generations.get(uid, 0) == 0:
            # done at its first claim: never failed (a failure gives the unit back, and the next claim is the 2nd)
            out.append(UnitStatus(uid, "DONE", unit.rows, unit.rows, "", 0, "", labels[unit.cell]))
        elif view.complete and uid not in view.named:
            out.append(UnitStatus(uid, "PENDING", 0, unit.rows, "", 0, "", labels[unit.cell]))
        elif view.complete and held is not None and held.generation == 0 and running.get(uid, ("",))[0] == held.slot:
            records = min(unit.rows, running[uid][1])
            out.append(UnitStatus(uid, "RUNNING", records, unit.rows, held.slot, 0, "", labels[unit.cell]))
        else:
            out.append(_unit_status(plan, unit, submission))
    return out


def _running_units(reports: list[WorkerReport], num_samples: int) -> dict[str, tuple[str, int]]:
    """unit -> (worker slot, records generated) for the units that live workers (a heartbeat within the lease) say
    they hold now."""
    out: dict[str, tuple[str, int]] = {}
    now, lease = time.time(), lease_s()
    for r in reports:
        if r.get("ended") is not None or now - float(r.get("heartbeat_at") or 0) > lease:
            continue
        windows = r.get("unit_windows") or {}
        for uid in r.get("current_units") or []:
            samples = int((windows.get(uid) or [None, None, 0])[2] or 0)
            out[uid] = (str(r.get("slot")), samples // max(1, num_samples))
    return out


def run_warnings(plan: Plan, reports: list[WorkerReport] | None = None) -> list[str]:
    """What the workers could not honour, each once (a requeued worker says it again)."""
    seen: dict[str, None] = {}
    for r in plan.run.worker_reports() if reports is None else reports:
        for w in r.get("warnings") or []:
            seen.setdefault(str(w), None)
    return list(seen)


def _latest_reports(reports: list[WorkerReport]) -> dict[str, WorkerReport]:
    """worker slot (and model, in a models: sweep: one engine each, in turn) -> its newest process's report."""
    out: dict[str, WorkerReport] = {}
    for r in reports:  # oldest first
        out[_worker_name(r)] = r
    return out


def _worker_name(r: WorkerReport) -> str:
    return f"{r.get('slot')}:{r['model']}" if r.get("model") else str(r.get("slot"))


def _job_status(
    plan: Plan,
    index: int,
    jid: str | None,
    states: dict[str, JobState],
    local: bool,
    reports: dict[str, WorkerReport],
    all_done: bool,
    submission: str | None = None,
) -> JobStatus:
    job_dir = plan.run.job(index)
    job = states.get(jid) if jid else None
    live = job_dir.read(job_dir.live)
    # a Slurm job's failures are counted per array; a local job's per submission (LAUNCHER_SUBMISSION)
    this = jid.split("_")[0] if jid else (submission if local else None)
    failures = of_submission(job_dir.read_failures(), this) if this is not None else []
    mine = [r for slot, r in reports.items() if slot.split(".")[0] == str(index)]
    if job is not None:
        state, reason = job.state, job.reason
    elif jid:  # sacct has not heard of a new job yet (~5 s)
        state, reason = "SUBMITTED", ""
    elif local:
        state, reason = _local_state(plan, index, mine, all_done)
    else:
        state, reason = "NOT SUBMITTED", ""
    fresh = live if live and live.get("job_id") == jid else {}
    last_error = failures[-1].error or "" if failures else next((r["error"] for r in mine if r.get("error")), "") or ""
    if not last_error and state in FINAL - {"DONE", "COMPLETED", "NOT SUBMITTED"}:
        last_error = _last_log_error(plan.run, jid)
    return JobStatus(
        index,
        state,
        reason,
        (job.node if job else None) or fresh.get("host"),
        jid,
        int(fresh.get("restart") or 0),
        len(failures),
        last_error[:200],
    )


def _local_state(plan: Plan, index: int, reports: list[WorkerReport], all_done: bool) -> tuple[str, str]:
    """A local job has no scheduler to ask: its process (from the submit lock's record) and its workers' reports."""
    from launcher.submit.lock import read_local_processes

    procs = [p for p in read_local_processes(plan.run.submit_lock) if p.task == index]
    alive = any(p.alive() is not False for p in procs)
    failed = [r for r in reports if r.get("state") == "failed"]
    if alive:
        return "RUNNING", "local process"
    if failed:
        return "FAILED", "a worker raised"
    interrupted = plan.run.read_json(plan.run.interrupted)
    submitted = plan.run.read_run().latest.submitted_epoch
    if not all_done and interrupted and interrupted.get("time", 0) >= submitted:
        return "INTERRUPTED", f"{interrupted.get('by')}: {resume_hint(plan.run)} again resumes it"
    if all_done or any(r.get("state") in ("done", "idle") for r in reports):
        return "COMPLETED", ""
    return "FAILED" if procs else "LOCAL", "ended without a report (killed?)" if procs else "submitted"


def _worker_status(r: WorkerReport) -> WorkerStatus:
    state = str(r.get("state") or "?")
    if r.get("ended") is None and time.time() - float(r.get("heartbeat_at") or r.get("started") or 0) > lease_s():
        state = "lost"  # no heartbeat for a lease: the process died without a word (SIGKILL, node failure)
    first, last = r.get("first_request_at"), r.get("last_write_at")
    rate = r["samples"] / (last - first) if first and last and last > first and r.get("samples") else None
    return WorkerStatus(
        _worker_name(r),
        str(r.get("host")),
        list(r.get("gpus") or []),
        state,
        list(r.get("current_units") or []),
        len(r.get("units_done") or []),
        int(r.get("records") or 0),
        int(r.get("samples") or 0),
        rate,
        int(r.get("restart") or 0),
        str(r.get("error") or "")[:200],
    )


def _unit_status(plan: Plan, unit: Any, submission: str | None) -> UnitStatus:
    udir = plan.run.unit(unit.unit_id)
    failures = of_submission(udir.read_failures(), submission)
    last_error = failures[-1].error or "" if failures else ""
    if udir.is_done():  # every row handled: generated or quarantined
        return UnitStatus(
            unit.unit_id, "DONE", unit.rows, unit.rows, "", len(failures), last_error[:200], unit.cell.label
        )
    rows = sum(udir.chunk_lines(p) for p in udir.chunk_files())
    head = udir.claims.head(observe=False)  # status reads; only workers leave a witness
    if len(failures) > plan.spec.slurm.max_retries:
        state, owner = "FAILED", ""
    elif head is not None and not head.released and head.age_s < lease_s():
        state, owner = "RUNNING", head.owner.worker
    else:
        state, owner = "PENDING", ""
    return UnitStatus(unit.unit_id, state, rows, unit.rows, owner, len(failures), last_error[:200], unit.cell.label)


def _last_log_error(run: RunDir, job_id: str | None) -> str:
    if not job_id:
        return ""
    from launcher.job.retries import log_tail

    lines = log_tail(run.job_log(job_id), 40)
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Killed" in line:
            return line.strip()
    return lines[-1] if lines else ""
