"""wait.py: after submit --wait: follow the tasks with a progress bar, report failed ones, gather, print the summary."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .gather import GatherError, GroupReport, gather
from .outputs import TaskStore
from .plan import Plan, Task

LOG_LINES_SHOWN = 8


def wait_and_gather(plan: Plan, sub: Any, console: Console, poll_s: float = 2.0) -> int:
    jobs = list(sub.jobs)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("tasks done", total=len(plan.tasks))
        while True:
            done = sum(TaskStore(plan.paths.task_dir(t)).is_done() for t in plan.tasks)
            progress.update(bar, completed=done)
            # a requeued task (preemption, time limit, a retry) is PENDING again, not done
            if done == len(plan.tasks) or all(j.done() for j in jobs):
                break
            time.sleep(poll_s)
    if sub.gather_job is not None:
        sub.gather_job.wait()  # its outcome is re-checked below by gathering again (same bytes)
    unfinished = [t for t in plan.tasks if not TaskStore(plan.paths.task_dir(t)).is_done()]
    for task in unfinished:
        report_failed(plan, task, console)
    try:
        reports = gather(plan)
    except GatherError as exc:
        console.print(f"[red]incomplete:[/]\n{exc}")
        return 1
    print_reports(reports, console)
    return 0


def report_failed(plan: Plan, task: Task, console: Console) -> None:
    """Which task, why (its last failure record), the end of its log, what to run next."""
    from .retries import read_failures

    failures = read_failures(plan.paths.task_dir(task))
    if not failures:
        console.print(f"[red]task {task.task_id} did not finish[/] (no failure recorded: cancelled, or timed out "
                      f"too many times); logs: {plan.paths.logs}")
        return
    last = failures[-1]
    console.print(f"[red]task {task.task_id} failed[/] after {last['failures']} failure(s) (max_retries "
                  f"{last['max_retries']}): {last['error']}")
    for line in last.get("log_tail", [])[-LOG_LINES_SHOWN:]:
        console.print(f"  | {line}", markup=False, highlight=False)
    if last.get("log"):
        console.print(f"  log: {last['log']}")
    console.print("  fix the cause, then `launcher submit` the same spec: finished records are kept")


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
