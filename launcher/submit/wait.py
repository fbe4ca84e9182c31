"""wait.py: after submit --wait: follow the run by records (with an ETA), report failures, gather, print the summary."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from launcher.gather import GatherError, GroupReport, gather
from launcher.gather.throughput import describe_gpus
from launcher.plan import Plan, Unit
from launcher.store import read_jsonl
from launcher.store.unit_dir import CHUNK_RE

LOG_LINES_SHOWN = 8


class RecordCounter:
    """Records done so far: done units from their marker, others by counting lines of their (immutable) chunks."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._done: dict[str, int] = {}
        self._chunk_lines: dict[str, int] = {}

    def count(self) -> int:
        total = 0
        for unit in self.plan.units:
            total += self._unit(unit)
        return total

    def units_done(self) -> int:
        return sum(1 for u in self.plan.units if u.unit_id in self._done or self.plan.run.unit(u.unit_id).is_done())

    def _unit(self, unit: Unit) -> int:
        if unit.unit_id in self._done:
            return self._done[unit.unit_id]
        udir = self.plan.run.unit(unit.unit_id)
        if udir.is_done():
            self._done[unit.unit_id] = unit.rows
            return unit.rows
        n = 0
        for path in udir.chunk_files():
            key = str(path)
            if key not in self._chunk_lines and CHUNK_RE.match(path.name):
                try:
                    self._chunk_lines[key] = path.read_bytes().count(b"\n")
                except OSError:
                    continue
            n += self._chunk_lines.get(key, 0)
        return n


def wait_and_gather(plan: Plan, sub: Any, console: Console, poll_s: float = 2.0) -> int:
    """Follow the run, gather, print what came out. 1 when it is incomplete or generated nothing at all."""
    reports = wait_for_run(plan, sub, console, poll_s)
    if reports is None:
        return 1
    return 1 if report_empty_run(reports, console) else 0


def wait_for_run(plan: Plan, sub: Any, console: Console, poll_s: float = 2.0) -> list[GroupReport] | None:
    """Follow the run by records until its jobs end, say why any unit failed, gather and print the cells. None (and
    why, printed) when the outputs are incomplete."""
    jobs = list(sub.jobs)
    counter = RecordCounter(plan)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"{len(jobs)} worker job(s)", total=plan.total_records)
        while True:
            progress.update(bar, completed=counter.count())
            # a requeued job (preemption, time limit, a retry) is PENDING again, not done
            if counter.units_done() == len(plan.units) or all(j.done() for j in jobs):
                progress.update(bar, completed=counter.count())
                break
            time.sleep(poll_s)
    if sub.gather_job is not None:
        sub.gather_job.wait()  # its outcome is re-checked below by gathering again (same bytes)
    for unit in plan.units:
        if not plan.run.unit(unit.unit_id).is_done():
            report_failed(plan, unit, console)
    print_warnings(plan, console)
    try:
        reports = gather(plan)
    except GatherError as exc:
        console.print(f"[red]incomplete:[/]\n{exc}")
        return None
    print_reports(reports, console)
    return reports


def report_empty_run(reports: list[GroupReport], console: Console) -> bool:
    """True, having said why, when the run generated no record at all (every record quarantined, or none there): a
    run that generates nothing must not look like a success. A cell that generated nothing beside others that did
    gets a warning."""
    if any(r.records for r in reports):
        for r in reports:
            if not r.records:
                console.print(
                    f"[yellow]warning:[/] {r.label} generated nothing: {r.quarantined} record(s) quarantined; "
                    f"why: {r.out_dir / 'quarantine.jsonl'}",
                    soft_wrap=True,
                    highlight=False,
                )
        return False
    quarantined = sum(r.quarantined for r in reports)
    if not quarantined:
        console.print("[red]nothing generated:[/] the run has no records (its datasets hold no row to run)")
        return True
    files = [r.out_dir / "quarantine.jsonl" for r in reports if r.quarantined]
    console.print(
        f"[red]nothing generated:[/] all {quarantined} record(s) were quarantined; the reasons are in "
        + ", ".join(str(f) for f in files),
        soft_wrap=True,
        highlight=False,
    )
    for reason, count in top_reasons(files):
        console.print(f"  {count} x {reason}", markup=False, highlight=False, soft_wrap=True)
    console.print("  fix the data or the settings these reasons name, then run again", highlight=False)
    return True


def top_reasons(files: list[Path], shown: int = 3) -> list[tuple[str, int]]:
    """The commonest quarantine reasons, alike up to their numbers (row, column, character positions)."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for path in files:
        for q in read_jsonl(path):
            reason = str(q.get("reason", ""))
            key = re.sub(r"\d+", "#", reason)
            counts[key] += 1
            example.setdefault(key, reason)
    return [(example[k][:300], n) for k, n in counts.most_common(shown)]


def report_failed(plan: Plan, unit: Unit, console: Console) -> None:
    """Which unit, why (its last failure record, else its job's or a worker's), the end of the log, what to run."""
    from launcher.job.retries import read_failures

    failures = plan.run.unit(unit.unit_id).read_failures()
    job_failures = [f for i in range(plan.jobs) for f in read_failures(plan.run.job(i).root)]
    worker_errors = [r for r in plan.run.worker_reports() if r.get("error")]
    if not failures and not job_failures and not worker_errors:
        console.print(
            f"[red]unit {unit.unit_id} did not finish[/] (no failure recorded: cancelled, or timed out "
            f"too many times); logs: {plan.run.logs}"
        )
        return
    if failures:
        last = failures[-1]
        console.print(
            f"[red]unit {unit.unit_id} failed[/] {len(failures)} time(s), last in worker "
            f"{last.get('worker')} on {last.get('host')}: {escape(str(last.get('error')))}",
            soft_wrap=True,
        )
    else:  # the crash was not this unit's own (the engine's start, the job's set-up): say whose it was
        last_job = sorted(job_failures, key=lambda f: f.get("time", 0))[-1] if job_failures else {}
        why = last_job.get("error") or worker_errors[-1].get("error")
        console.print(f"[red]unit {unit.unit_id} did not finish:[/] its job failed: {escape(str(why))}", soft_wrap=True)
    if job_failures:
        last = sorted(job_failures, key=lambda f: f.get("time", 0))[-1]
        for line in last.get("log_tail", [])[-LOG_LINES_SHOWN:]:
            console.print(f"  | {line}", markup=False, highlight=False)
        if last.get("log"):
            console.print(f"  log: {last['log']}")
    console.print("  fix the cause, then `launcher submit` the same spec: finished records are kept")


def print_warnings(plan: Plan, console: Console) -> None:
    """Requests the workers could not honour, where the user is looking (also in `launcher status`)."""
    from launcher.submit.status import run_warnings

    for w in run_warnings(plan):
        console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)


def print_reports(reports: list[GroupReport], console: Console) -> None:
    for r in reports:
        summary = json.loads((r.out_dir / "inference_summary.json").read_text())
        console.print(
            f"[green]{r.label}[/]: {r.records} records, {r.samples} samples"
            + (f", {r.quarantined} quarantined" if r.quarantined else "")
            + f" -> {r.out_dir}"
        )
        if r.files_removed:
            shown = ", ".join(r.files_removed[:5]) + (", ..." if len(r.files_removed) > 5 else "")
            console.print(
                f"  removed {len(r.files_removed)} file(s) an earlier gather wrote there and this one does not "
                f"(renamed per-user files, users no longer in the data): {shown}",
                markup=False,
            )
        console.print(
            f"  backend {summary['backend']} (TP={summary['tensor_parallel_size']}, "
            f"DP={summary['data_parallel_size']}); {summary['throughput_samples_per_sec']} samples/s, "
            f"{summary['output_tokens_per_sec']} output tok/s over {summary['inference_time_seconds']}s "
            "(wall clock)"
        )
    if reports:
        run = json.loads((reports[0].out_dir / "inference_summary.json").read_text())["run"]
        console.print(
            f"run: {run['samples']} samples in {run['generation_wall_s']} s of generation "
            f"({run['samples_per_sec']} samples/s by the wall clock, {run['workers_generating']} worker(s)); "
            f"GPU busy {_pct(run['gpu_busy_fraction'])} of the workers' time; e2e {run['e2e_wall_s']} s"
        )
        if gpus := describe_gpus(run):
            console.print(gpus)


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None else "n/a"
