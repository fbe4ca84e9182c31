"""wait.py: after submit --wait: follow the jobs with a progress bar, then gather and print the summary."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .gather import GatherError, GroupReport, gather
from .outputs import TaskStore
from .plan import Plan


def wait_and_gather(plan: Plan, sub: Any, console: Console, poll_s: float = 2.0) -> int:
    jobs = list(sub.jobs)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("tasks done", total=len(plan.tasks))
        while True:
            done = sum(TaskStore(plan.paths.task_dir(t)).is_done() for t in plan.tasks)
            progress.update(bar, completed=done)
            if all(j.done() for j in jobs) or done == len(plan.tasks):
                break
            time.sleep(poll_s)
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # report every failed task, not just the first
            failed.append((job.job_id, str(exc).strip().splitlines()[-8:]))
    for job_id, lines in failed:
        console.print(f"[red]task job {job_id} failed[/]:\n  " + "\n  ".join(lines))
    if sub.gather_job is not None:
        sub.gather_job.result()
    try:
        reports = gather(plan)
    except GatherError as exc:
        console.print(f"[red]incomplete:[/]\n{exc}")
        return 1
    print_reports(reports, console)
    return 1 if failed else 0


def print_reports(reports: list[GroupReport], console: Console) -> None:
    import json

    for r in reports:
        summary = json.loads((r.out_dir / "inference_summary.json").read_text())
        console.print(f"[green]{r.dataset}/{r.ablation}[/]: {r.records} records, {r.samples} samples"
                      + (f", {r.quarantined} quarantined" if r.quarantined else "")
                      + f" -> {r.out_dir}")
        console.print(f"  backend {summary['backend']} (TP={summary['tensor_parallel_size']}, "
                      f"DP={summary['data_parallel_size']}); {summary['throughput_samples_per_sec']} samples/s, "
                      f"{summary['output_tokens_per_sec']} output tok/s over {summary['inference_time_seconds']}s")
