"""submit/status_view.py: RunStatus -> what `launcher status` prints: a table of jobs and their workers, the units
not done, warnings; `--watch` live in a terminal, one plain line per poll in a pipe; `--json`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from launcher.gather.throughput import busy_words, describe_cpus, describe_gpus
from launcher.submit.fit import reason_words
from launcher.submit.status import COLORS, FINAL, UNITS_SHOWN, RunStatus, UnitStatus, WorkerStatus, collect
from launcher.terminal import printable, safe


def render(status: RunStatus) -> Group:
    """Every string from the run directory (ids, hosts, errors, warnings) goes through launcher.terminal.safe: a
    user id or an error message can neither move the cursor nor recolour the terminal."""
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(status.counts.items()))
    gather = f"; gather job {safe(status.gather_job_id)}: {safe(status.gather_state)}" if status.gather_job_id else ""
    fig = status.run_figures
    rate = (
        f"{fig['samples']} samples, {fig['samples_per_sec']} samples/s by the wall clock, {busy_words(fig)}"
        if fig.get("samples_per_sec")
        else "no samples yet"
    )
    title = f"run {safe(status.run_id)}: units {counts}{gather}; {rate}"
    workers = Table(title=title)
    for col in (
        "job",
        "state",
        "node",
        "slurm job",
        "worker",
        "GPUs",
        "worker state",
        "unit(s)",
        "records",
        "samples/s",
        "requeues",
        "last error",
    ):
        workers.add_column(col)
    by_job: dict[int, list[WorkerStatus]] = {}
    for w in status.workers:
        by_job.setdefault(int(w.worker.split(".")[0]), []).append(w)
    for j in status.jobs:
        color = COLORS.get(j.state, "")
        shown = safe(f"{j.state} ({reason_words(j.reason)})" if j.reason else j.state)
        ws = by_job.get(j.index) or [None]  # type: ignore[list-item]
        for k, w in enumerate(ws):
            head = (
                [str(j.index), f"[{color}]{shown}[/]" if color else shown, safe(j.node or ""), safe(j.job_id or "")]
                if k == 0
                else ["", "", "", ""]
            )
            if w is None:
                workers.add_row(*head, "", "", "", "", "", "", str(j.requeues), safe(j.last_error))
                continue
            workers.add_row(
                *head,
                safe(w.worker),
                safe(",".join(w.gpus) or "cpu"),
                safe(w.state),
                safe(", ".join(w.units) or "-"),
                str(w.records),
                f"{w.samples_per_s:.2f}" if w.samples_per_s else "",
                str(j.requeues if k == 0 else w.restart),
                safe(w.error or (j.last_error if k == 0 else "")),
            )
    jobless = {i: ws for i, ws in by_job.items() if i not in {j.index for j in status.jobs}}
    for index, ws in sorted(jobless.items()):  # `launcher run`: workers with no submitted job around them
        for w in ws:
            workers.add_row(
                str(index),
                "",
                "",
                "",
                w.worker,
                ",".join(w.gpus) or "cpu",
                w.state,
                ", ".join(w.units) or "-",
                str(w.records),
                f"{w.samples_per_s:.2f}" if w.samples_per_s else "",
                str(w.restart),
                w.error,
            )
    units = Table(title="units not done")
    for col in ("unit", "state", "records", "worker", "failures", "last error"):
        units.add_column(col)
    shown_units = [u for u in status.units if u.state != "DONE"][:UNITS_SHOWN]
    for u in shown_units:
        color = COLORS.get(u.state, "")
        units.add_row(
            safe(u.unit_id),
            f"[{color}]{u.state}[/]" if color else safe(u.state),
            f"{u.records_done}/{u.records_total}",
            safe(u.owner),
            str(u.failures),
            safe(u.last_error),
        )
    rest = len([u for u in status.units if u.state != "DONE"]) - len(shown_units)
    if rest > 0:
        units.add_row("...", f"{rest} more", "", "", "", "")
    notes = [f"[yellow]warning:[/] {safe(w)}" for w in status.warnings]
    figures = [safe(line) for line in (describe_gpus(fig), describe_cpus(fig)) if line]
    pending = [units] if shown_units else []  # all done: the cells table says so
    # No worker job in the latest submission (it found every unit done): no empty table, a line that says so.
    jobs: list[Table | str] = [workers] if status.jobs else [f"{title}\n{no_jobs_words(status)}"]
    return Group(*jobs, cells_table(status), *pending, *figures, *notes)


def no_jobs_words(status: RunStatus) -> str:
    """Why the jobs table is left out."""
    if status.units and all(u.state == "DONE" for u in status.units):
        return "no worker job in the latest submission: every unit was already done (nothing to run)"
    return "no worker job submitted yet"


def cells_table(status: RunStatus) -> Table:
    """One line per output group (model or adapter x dataset x ablation): how far each has got."""
    cells = Table(title="cells")
    for col in ("cell", "units done", "records", "state"):
        cells.add_column(col, justify="right" if col in ("units done", "records") else "left")
    by_cell: dict[str, list[UnitStatus]] = {}
    for u in status.units:
        by_cell.setdefault(u.cell, []).append(u)
    for cell, units in by_cell.items():
        states = {u.state for u in units}
        state = next((s for s in ("FAILED", "RUNNING", "PENDING") if s in states), "DONE")
        color = COLORS.get(state, "")
        cells.add_row(
            safe(cell),
            f"{sum(u.state == 'DONE' for u in units)}/{len(units)}",
            f"{sum(u.records_done for u in units)}/{sum(u.records_total for u in units)}",
            f"[{color}]{state}[/]" if color else state,
        )
    return cells


def show_status(
    run_dir: Path, console: Console, watch: bool = False, as_json: bool = False, every_s: float = 3.0
) -> int:
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
    if not console.is_terminal:  # a pipe or a log file: one plain line per poll, no cursor movement
        print(summary_line(status), flush=True)
        while not _settled(status):
            time.sleep(every_s)
            status = collect(run_dir)
            print(summary_line(status), flush=True)
        return _exit_code(status)
    with Live(render(status), console=console, refresh_per_second=1) as live:
        while not _settled(status):
            time.sleep(every_s)
            status = collect(run_dir)
            live.update(render(status))
    return _exit_code(status)


def _settled(status: RunStatus) -> bool:
    return all(j.state in FINAL for j in status.jobs) or all(u.state == "DONE" for u in status.units)


def summary_line(status: RunStatus) -> str:
    """One line for logs and pipes: time, units by state, records, workers and the wall-clock rate."""
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(status.counts.items()))
    done = sum(u.records_done for u in status.units)
    total = sum(u.records_total for u in status.units)
    working = sum(1 for w in status.workers if w.state in ("running", "loading", "starting"))
    rate = status.run_figures.get("samples_per_sec")
    return printable(
        f"{time.strftime('%H:%M:%S')} run {status.run_id}: units {counts}; records {done}/{total}; "
        f"{working} worker(s) working" + (f"; {rate} samples/s" if rate else "")
    )


def _exit_code(status: RunStatus) -> int:
    """1 when a unit failed for good, or every job has ended with units left."""
    if any(u.state == "FAILED" for u in status.units):
        return 1
    ended = status.jobs and all(j.state in FINAL for j in status.jobs)
    return 1 if ended and any(u.state != "DONE" for u in status.units) else 0
