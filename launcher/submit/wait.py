"""submit/wait.py: after submit --wait: follow the run by records (a bar with an ETA in a terminal, a plain line every
few seconds in a log or a pipe), report failures with what resumes the run, gather, print the summary."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from launcher.errors import UntrustedFile
from launcher.gather import GroupReport, gather
from launcher.gather.throughput import busy_words, describe_cpus, describe_gpus
from launcher.plan import Plan, Unit
from launcher.plan.persist import resume_hint
from launcher.store import CellDir, read_json, read_jsonl
from launcher.store.unit_dir import CHUNK_RE
from launcher.terminal import printable, safe

LOG_LINES_SHOWN = 8
JOBS_EXIT_WAIT_S = 60.0  # once every unit is done, how long the jobs get to write their last reports and exit


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
                lines = udir.chunk_lines(path)
                if not lines:
                    continue
                self._chunk_lines[key] = lines
            n += self._chunk_lines.get(key, 0)
        return n


PROGRESS_EVERY_S = 10.0  # a plain progress line this often where stdout is no terminal (LAUNCHER_PROGRESS_S)


def progress_every_s(given: float | None = None) -> float:
    """Seconds between plain progress lines: --progress-every, else $LAUNCHER_PROGRESS_S, else 10."""
    if given is not None:
        return max(0.5, given)
    try:
        return max(0.5, float(os.environ.get("LAUNCHER_PROGRESS_S") or PROGRESS_EVERY_S))
    except ValueError:
        return PROGRESS_EVERY_S


class ProgressLines:
    """What a log file, CI or `| cat` sees while the run goes on: a line every `every_s` with records done/total,
    the rate since the first record came in and the ETA at that rate (a bar that redraws itself is a terminal's)."""

    def __init__(self, console: Console, total: int, jobs: int, every_s: float, noun: str = "records") -> None:
        self.console, self.total, self.jobs, self.every_s, self.noun = console, total, jobs, every_s, noun
        self.t0 = time.monotonic()
        self.first: tuple[float, int] | None = None  # when records were first seen, and how many: the rate's base
        self.last_line = -every_s  # the first poll prints at once

    def update(self, done: int, units_done: int, units: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.first is None and done:
            self.first = (now, done)  # those came in before this poll, at no known time: not part of the rate
        if not final and now - self.t0 - self.last_line < self.every_s:
            return
        self.last_line = now - self.t0
        pct = 100 * done / self.total if self.total else 100.0
        rate = None
        if self.first is not None and done > self.first[1] and now > self.first[0]:
            rate = (done - self.first[1]) / (now - self.first[0])
        if rate:
            shown = f"{rate:.2f} {self.noun}/s, " + (f"ETA {_clock((self.total - done) / rate)}" if done < self.total
                                                     else "done")  # fmt: skip
        else:
            shown = f"rate: waiting for the first {self.noun}" if not done else "rate: measuring"
        self.console.print(
            f"{time.strftime('%H:%M:%S')} {done}/{self.total} {self.noun} ({pct:.0f}%), {shown}; "
            f"units {units_done}/{units} done; {self.jobs} worker job(s); {_clock(now - self.t0)} elapsed",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def wait_and_gather(
    plan: Plan,
    sub: Any,
    console: Console,
    poll_s: float = 2.0,
    every_s: float | None = None,
    noun: str = "records",
    after_gather: Callable[[], None] | None = None,
) -> int:
    """Follow the run, gather, print what came out. 1 when it generated nothing at all; GatherError (exit 1) when it
    is incomplete. after_gather: what must be written even when nothing was generated (a batch file's error lines),
    before the verdict."""
    reports = wait_for_run(plan, sub, console, poll_s, every_s, noun)
    if after_gather is not None:
        after_gather()
    return 1 if report_empty_run(reports, console) else 0


def wait_for_run(
    plan: Plan, sub: Any, console: Console, poll_s: float = 2.0, every_s: float | None = None, noun: str = "records"
) -> list[GroupReport]:
    """Follow the run until its jobs end (a bar in a terminal, a plain line every `every_s` elsewhere), say why any
    unit failed, gather and print the cells. Raises GatherError when the outputs are incomplete. noun: what a
    record is to the user (a line of a `launcher batch` file)."""
    jobs = list(sub.jobs)
    counter = RecordCounter(plan)
    every = progress_every_s(every_s)

    def finished() -> bool:  # a requeued job (preemption, time limit, a retry) is PENDING again, not done
        return counter.units_done() == len(plan.units) or all(j.done() for j in jobs)

    if not console.is_terminal:
        lines = ProgressLines(console, plan.total_records, len(jobs), every, noun)
        while True:
            done = finished()
            lines.update(counter.count(), counter.units_done(), len(plan.units), final=done)
            if done:
                break
            time.sleep(min(poll_s, every))
    else:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(noun),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task(f"{len(jobs)} worker job(s)", total=plan.total_records)
            while True:
                progress.update(bar, completed=counter.count())
                if finished():
                    progress.update(bar, completed=counter.count())
                    break
                time.sleep(poll_s)
    # Every unit done: the workers still write their last reports (samples, windows, layout) as they exit. Gathering
    # before that would summarize half-written figures (seen: "TP=None", fewer samples than written).
    deadline = time.monotonic() + JOBS_EXIT_WAIT_S
    while not all(j.done() for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
    if sub.gather_job is not None:
        sub.gather_job.wait()  # its outcome is re-checked below by gathering again (same bytes)
    for unit in plan.units:
        if not plan.run.unit(unit.unit_id).is_done():
            report_failed(plan, unit, console)
    print_warnings(plan, console)
    reports = gather(plan)  # GatherError (incomplete, exit 1) reaches the CLI's one handler
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
                    f"[yellow]warning:[/] {safe(r.label)} generated nothing: {r.quarantined} record(s) quarantined; "
                    f"why: {safe(CellDir(r.out_dir).quarantine)}",
                    soft_wrap=True,
                    highlight=False,
                )
        return False
    quarantined = sum(r.quarantined for r in reports)
    if not quarantined:
        console.print("[red]nothing generated:[/] the run has no records (its datasets hold no row to run)")
        return True
    files = [CellDir(r.out_dir).quarantine for r in reports if r.quarantined]
    console.print(
        f"[red]nothing generated:[/] all {quarantined} record(s) were quarantined; the reasons are in "
        + ", ".join(safe(f) for f in files),
        soft_wrap=True,
        highlight=False,
    )
    for reason, count in top_reasons(files):
        console.print(f"  {count} x {printable(reason)}", markup=False, highlight=False, soft_wrap=True)
    console.print("  fix the data or the settings these reasons name, then run again", highlight=False)
    return True


def top_reasons(files: list[Path], shown: int = 3) -> list[tuple[str, int]]:
    """The commonest quarantine reasons, alike up to their numbers (row, column, character positions)."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for path in files:
        try:
            found = list(read_jsonl(path))
        except (OSError, ValueError, UntrustedFile):  # gone, damaged or planted since the gather: no reasons shown
            continue
        for q in found:
            reason = str(q.get("reason", ""))
            key = re.sub(r"\d+", "#", reason)
            counts[key] += 1
            example.setdefault(key, reason)
    return [(example[k][:300], n) for k, n in counts.most_common(shown)]


def follow(
    plan: Plan,
    sub: Any,
    kind: str,
    console: Console,
    err: Console,
    every_s: float | None = None,
    noun: str = "records",
    after_gather: Callable[[], None] | None = None,
) -> int:
    """wait_and_gather, and Ctrl-C: a local run's jobs are stopped with SIGTERM (each writes what it finished and
    gives its units back: job/entry.py), a Slurm run goes on; either way the user hears what is kept and what
    resumes it. Exit code 130 after Ctrl-C."""
    try:
        return wait_and_gather(plan, sub, console, every_s=every_s, noun=noun, after_gather=after_gather)
    except KeyboardInterrupt:
        again = safe(resume_hint(plan.run))
        if kind != "local":
            err.print(
                "[yellow]stopped waiting:[/] the jobs go on in Slurm. `launcher status "
                f"{safe(sub.run_dir)}` follows them, `launcher gather {safe(sub.run_dir)}` once they are done, "
                f"`launcher cancel {safe(sub.run_dir)}` stops them (records written are kept).",
                soft_wrap=True,
            )
            return 130
        from launcher.submit.cancel import stop_local_jobs
        from launcher.submit.lock import read_local_processes

        err.print("[yellow]interrupted:[/] stopping the local jobs (each writes what it finished first)...")
        try:
            left = stop_local_jobs(read_local_processes(plan.run.submit_lock))
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; the jobs have their SIGTERM and stop anyway
            left = []
        by = "Ctrl-C on `--wait`"  # after the jobs' own note (SIGTERM): this says who sent it
        with contextlib.suppress(OSError, UntrustedFile):  # a run folder not ours any more: nothing written into it
            plan.run.write_json(plan.run.interrupted, {"time": time.time(), "executor": kind, "by": by})
        err.print(
            ("[yellow]interrupted:[/] the local jobs stopped. " if not left else "[yellow]interrupted:[/] "
             f"{len(left)} local job(s) still stopping (pids {' '.join(str(p.pid) for p in left)}). ")
            + f"Every record already written is kept; {again} again resumes with the rest "
            f"(`launcher status {safe(sub.run_dir)}` shows what is done).",
            soft_wrap=True,
        )  # fmt: skip
        return 130


def report_failed(plan: Plan, unit: Unit, console: Console) -> None:
    """Which unit, why (its last failure record, else its job's or a worker's), the end of the log, what to run."""
    failures = plan.run.unit(unit.unit_id).read_failures()
    job_failures = [f for i in range(plan.jobs) for f in plan.run.job(i).read_failures()]
    worker_errors = [r for r in plan.run.worker_reports() if r.get("error")]
    if not failures and not job_failures and not worker_errors:
        console.print(
            f"[red]unit {safe(unit.unit_id)} did not finish[/] (no failure recorded: cancelled, or timed out "
            f"too many times); logs: {safe(plan.run.logs)}; then {safe(resume_hint(plan.run))} again: finished "
            "records are kept"
        )
        return
    last_job = sorted(job_failures, key=lambda f: f.time)[-1] if job_failures else None
    if failures:
        last = failures[-1]
        console.print(
            f"[red]unit {safe(unit.unit_id)} failed[/] {len(failures)} time(s), last in worker "
            f"{safe(last.worker)} on {safe(last.host)}: {safe(last.error)}",
            soft_wrap=True,
        )
    else:  # the crash was not this unit's own (the engine's start, the job's set-up): say whose it was
        why = (last_job.error if last_job else None) or worker_errors[-1].get("error")
        console.print(f"[red]unit {safe(unit.unit_id)} did not finish:[/] its job failed: {safe(why)}", soft_wrap=True)
    if last_job is not None:
        for line in last_job.log_tail[-LOG_LINES_SHOWN:]:
            console.print(f"  | {printable(line)}", markup=False, highlight=False)
        if last_job.log:
            console.print(f"  log: {safe(last_job.log)}")
    console.print(f"  fix the cause, then {safe(resume_hint(plan.run))} again: finished records are kept")


def print_warnings(plan: Plan, console: Console) -> None:
    """Requests the workers could not honour, where the user is looking (also in `launcher status`)."""
    from launcher.submit.status import run_warnings

    for w in run_warnings(plan):
        console.print(f"[yellow]warning:[/] {safe(w)}", soft_wrap=True)


def print_reports(reports: list[GroupReport], console: Console) -> None:
    for r in reports:
        summary = read_json(CellDir(r.out_dir).summary)
        console.print(
            f"[green]{safe(r.label)}[/]: {r.records} records, {r.samples} samples"
            + (f", {r.quarantined} quarantined" if r.quarantined else "")
            + f" -> {safe(r.out_dir)}"
        )
        if r.files_removed:
            shown = ", ".join(r.files_removed[:5]) + (", ..." if len(r.files_removed) > 5 else "")
            console.print(
                f"  removed {len(r.files_removed)} file(s) an earlier gather wrote there and this one does not "
                f"(renamed per-user files, users no longer in the data): {shown}",
                markup=False,
            )
        console.print(
            f"  backend {safe(summary['backend'])} (TP={summary['tensor_parallel_size']}, "
            f"DP={summary['data_parallel_size']}); {summary['throughput_samples_per_sec']} samples/s, "
            f"{summary['output_tokens_per_sec']} output tok/s over {summary['inference_time_seconds']}s "
            "(wall clock)"
        )
    if reports:
        run = read_json(CellDir(reports[0].out_dir).summary)["run"]
        console.print(
            f"run: {run['samples']} samples in {run['generation_wall_s']} s of generation "
            f"({run['samples_per_sec']} samples/s by the wall clock, {run['workers_generating']} worker(s)); "
            f"{busy_words(run)} of the workers' time; e2e {run['e2e_wall_s']} s"
            + (
                f"; vLLM prefix cache: {_pct(run['prefix_cache_hit_rate'])} of prompt tokens"
                if run.get("prefix_cache_hit_rate") is not None
                else ""
            )
        )
        for line in (describe_gpus(run), describe_cpus(run)):
            if line:
                console.print(safe(line), soft_wrap=True)


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None else "n/a"
