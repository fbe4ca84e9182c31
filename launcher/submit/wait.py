"""wait.py: after submit --wait: follow the run by records (with an ETA), report failures, gather, print the summary."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from launcher.gather import GatherError, GroupReport, gather
from launcher.gather.throughput import describe_gpus
from launcher.plan import Plan, Unit
from launcher.store.unit_dir import CHUNK_RE

LOG_LINES_SHOWN = 8


class RecordCounter:
    """Records done so far: done units from units.log (or their marker), others by counting lines of their (immutable)
    chunks; a unit the run's log never named has none to count."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.view = plan.run.unit_view()
        self._done: dict[str, int] = {}
        self._chunk_lines: dict[str, int] = {}

    def count(self) -> int:
        self.view.refresh()
        return sum(self._unit(unit) for unit in self.plan.units)

    def units_done(self) -> int:
        return sum(1 for u in self.plan.units if self._is_done(u))

    def _is_done(self, unit: Unit) -> bool:
        if unit.unit_id in self._done or unit.unit_id in self.view.done:
            return True
        return self.view.maybe_done(unit.unit_id) and self.plan.run.unit(unit.unit_id).is_done()

    def _unit(self, unit: Unit) -> int:
        if unit.unit_id in self._done:
            return self._done[unit.unit_id]
        if self._is_done(unit):
            self._done[unit.unit_id] = unit.rows
            return unit.rows
        if not self.view.maybe_done(unit.unit_id):
            return 0
        udir = self.plan.run.unit(unit.unit_id)
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
        return 1
    print_reports(reports, console)
    return 0


def report_failed(plan: Plan, unit: Unit, console: Console) -> None:
    """Which unit, why (its last failure record, or its job's), the end of the log, what to run next."""
    from launcher.job.retries import read_failures

    failures = plan.run.unit(unit.unit_id).read_failures()
    job_failures = [f for i in range(plan.jobs) for f in read_failures(plan.run.job(i).root)]
    if not failures and not job_failures:
        console.print(
            f"[red]unit {unit.unit_id} did not finish[/] (no failure recorded: cancelled, or timed out "
            f"too many times); logs: {plan.run.logs}"
        )
        return
    if failures:
        last = failures[-1]
        console.print(
            f"[red]unit {unit.unit_id} failed[/] {len(failures)} time(s), last in worker "
            f"{last.get('worker')} on {last.get('host')}: {last.get('error')}"
        )
    if job_failures:
        last = sorted(job_failures, key=lambda f: f.get("time", 0))[-1]
        for line in last.get("log_tail", [])[-LOG_LINES_SHOWN:]:
            console.print(f"  | {line}", markup=False, highlight=False)
        if last.get("log"):
            console.print(f"  log: {last['log']}")
    console.print("  fix the cause, then `launcher submit` the same spec: finished records are kept")


def print_warnings(plan: Plan, console: Console) -> None:
    """Requests the workers could not honour, where the user is looking (also in `launcher status`)."""
    from rich.markup import escape

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
