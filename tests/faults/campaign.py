"""campaign.py: a seed -> trials (a fault kind and where it lands) -> each trial run against the live local Slurm ->
a JSON report: trials run and passed, faults by kind, records checked, lost, duplicated.

A trial submits a small run (2 datasets cut into units, 2 worker jobs that claim them; the HF backend on the tiny
demo model; its own output dir), injects ONE real fault at a point that `random.Random(seed)` chose, waits for the
run's gather job, and checks that no record was lost or generated twice (in the units' chunk files, before gather's
dedup), that the gathered outputs are byte-identical to an uninterrupted reference run of the same spec (computed
once per campaign), and that the fault landed (checks.py).

Faults (trials.py, KIND_LABELS): SIGKILL of a worker job's process; preemption by a job in the `high` partition;
scancel then `launcher submit` again; slurmd killed (SIGKILL) and restarted; a 1-minute time limit; the output
storage read-only for a while (a bind mount remounted ro); the disk full (the output dir is a tmpfs, shrunk to what
it holds, then grown back); kill -9 of one worker of a DP=2 job mid-unit; the input file touched mid-run; a bit
flipped in a stored chunk after the run (injectors.py); hostile text mixed with the good rows of a dataset
(hostile.py: its own verdict, since its data differs from the reference's on purpose).

    python -m tests.faults.campaign --trials 90 --seed 1 --report docs/faults-last-campaign.json

trials.py: the workload and the seeded trials; injectors.py: one trial and every kind's injector; checks.py: the
verdict; cluster.py: slurmd, mounts, processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..helpers import FINAL_JOB_STATES, chunk_rows, job_state, submissions, submit
from . import cluster
from .checks import TrialResult, gathered_files
from .injectors import TRIAL_TIMEOUT_S, TrialRun
from .trials import KIND_LABELS, KINDS, ROOT, Trial, Workload, make_workload, plan_trials, write_spec

os.environ.setdefault("OMP_NUM_THREADS", "1")  # exported to the jobs: 8 worker jobs on 2 cores, one thread each
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_reference(wl: Workload) -> tuple[dict[str, bytes], float]:
    """The same spec, uninterrupted: what every trial must reproduce byte for byte."""
    t0 = time.monotonic()
    out = wl.root / "reference"
    run_dir, _ = submit(write_spec(wl, "reference", out))
    gather_id = submissions(run_dir)[-1]["gather_job_id"]
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while (state := job_state(gather_id)) not in FINAL_JOB_STATES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the reference run {run_dir} did not finish in {TRIAL_TIMEOUT_S:.0f}s")
        time.sleep(1.0)
    rows = chunk_rows(run_dir)
    if state != "COMPLETED" or len(rows) != wl.records or len(set(rows)) != wl.records:
        raise RuntimeError(f"the reference run failed (gather job {state}, {len(rows)} rows): see {run_dir}/logs")
    return gathered_files(out, wl), round(time.monotonic() - t0, 1)


def _interleave(*groups: list[Trial]) -> list[Trial]:
    out: list[Trial] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def schedule(trials: Sequence[Trial]) -> list[Trial]:
    """Start order; only wall time depends on it. Two chains set it: Slurm's signals (SignalGate: an outage excludes
    the signal windows of the time limits, preemptions and resubmits, and goes before new ones) and the fake GPUs
    (one GPU trial at a time). The time limits start first (the longest trials: they take their signal windows before
    any outage waits), then the rest with the node failures, the worker kills and the preemptions spread among them;
    the other kinds keep the machine busy meanwhile. (Node failures first raced the time limits for the gate: a time
    limit that lost waited for both outages, then ran its 2-minute attempt, 2.5 minutes late.)"""

    def spread(base: list[Trial], extra: list[Trial]) -> list[Trial]:
        out, step = list(base), max(1, len(base) // (len(extra) + 1))
        for i, t in enumerate(extra):
            out.insert(min(len(out), (i + 1) * step + i), t)
        return out

    of = {k: [t for t in trials if t.kind == k] for k in KINDS}
    special = _interleave(of["workerkill"], of["node"], of["preempt"])
    others = [t for t in trials if t.kind not in ("timeout", "node", "preempt", "workerkill")]
    return of["timeout"] + spread(others, special)


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the fault campaign needs root: it mounts file systems and restarts slurmd")
    if cluster.run(["scontrol", "ping"]).returncode != 0 or cluster.slurmd_pid() is None:
        raise SystemExit("no live local Slurm: run `make slurm-up` (bash slurm/up.sh)")


def run_campaign(
    trials: Sequence[Trial], wl: Workload, workers: int = 8, on_result: Callable[[TrialResult], None] | None = None
) -> dict[str, Any]:
    """The reference, then every trial (up to `workers` at once). Whatever happens, slurmd runs and nothing stays
    mounted at the end."""
    t0 = time.monotonic()
    preflight()
    cpu0 = cpu_times()
    reference, reference_s = run_reference(wl)
    gate = cluster.SignalGate()
    stop = threading.Event()
    results: list[TrialResult] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial")
    try:
        futures = [pool.submit(TrialRun(t, wl, reference, gate, stop, t0).execute) for t in schedule(trials)]
        for future in as_completed(futures):
            results.append(future.result())
            if on_result is not None:
                on_result(results[-1])
    finally:
        stop.set()  # a KeyboardInterrupt: trials stop waiting, restore what they changed, cancel their jobs
        pool.shutdown(wait=True, cancel_futures=True)
        if cluster.slurmd_pid() is None:
            cluster.start_slurmd()
        for path in sorted((wl.root / "trials").glob("*"), reverse=True):
            if path.is_dir() and cluster.is_mountpoint(path):
                cluster.unmount(path)
    busy, total = (b - a for a, b in zip(cpu0, cpu_times(), strict=True))
    out = report(sorted(results, key=lambda r: r.index), wl, reference_s, round(time.monotonic() - t0, 1), workers)
    out["summary"]["cpu_busy"] = round(busy / total, 3) if total else None
    return out


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat: how much of the 2 cores the campaign used."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def report(
    results: Sequence[TrialResult], wl: Workload, reference_s: float, wall_s: float, workers: int
) -> dict[str, Any]:
    by_kind: dict[str, dict[str, Any]] = {}
    for r in results:
        k = by_kind.setdefault(
            r.kind,
            {
                "label": KIND_LABELS[r.kind],
                "trials": 0,
                "passed": 0,
                "landed": 0,
                "records": 0,
                "lost": 0,
                "duplicated": 0,
                "identical": 0,
            },
        )
        k["trials"] += 1
        k["passed"] += r.passed
        k["landed"] += r.landed
        k["records"] += r.records
        k["lost"] += r.lost
        k["duplicated"] += r.duplicated
        k["identical"] += r.identical
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    slurm = cluster.run(["sinfo", "--version"]).stdout.strip()
    return {
        "summary": {
            "trials_run": len(results),
            "trials_passed": sum(r.passed for r in results),
            "faults_by_kind": dict(sorted(by_kind.items())),
            "records_checked": sum(r.records for r in results),
            "records_lost": sum(r.lost for r in results),
            "records_duplicated": sum(r.duplicated for r in results),
            "outputs_identical": sum(r.identical for r in results),
            "faults_landed": sum(r.landed for r in results),
            "wall_seconds": wall_s,
            "reference_seconds": reference_s,
        },
        "setup": {
            "workers": workers,
            "units_per_trial": len(wl.units),
            "worker_jobs_per_trial": wl.jobs,
            "records_per_trial": wl.records,
            "datasets": [{"name": n, "records": k} for n, _, k in wl.datasets],
            "records_per_unit": wl.per_shard,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "slurm": slurm,
            "git_sha": sha,
        },
        "trials": [asdict(r) for r in results],
    }


def describe(r: TrialResult) -> str:
    verdict = "PASS" if r.passed else "FAIL"
    point = " ".join(f"{k}={v}" for k, v in r.point.items())
    line = (
        f"{r.index:3d} {r.kind:<10} {verdict}  {r.seconds:6.1f}s  records {r.records} lost {r.lost} "
        f"dup {r.duplicated} identical {'yes' if r.identical else 'NO'}  seed {r.seed}  {point}"
    )
    if not r.passed:
        line += f"\n      landed: {r.landed} ({r.evidence}); error: {r.error}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials",
        type=int,
        default=2 * len(KINDS) + 1,
        help=f"how many trials (kinds cycle: {len(KINDS)} or more has all)",
    )
    parser.add_argument("--seed", type=int, default=1, help="the campaign's seed: same seed, same trials")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--workers", type=int, default=8, help="trials at once (each has its own output dir)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list, of: {','.join(KINDS)}")
    parser.add_argument("--work", type=Path, help="work dir (model, data, trial outputs); default: a new temp dir")
    parser.add_argument("--model", type=Path, help="a model dir (default: a tiny demo model made in the work dir)")
    parser.add_argument("--only", help="comma list of trial indices: replay those trials of this seed's campaign")
    parser.add_argument("--evidence", action="store_true", help="print every trial's evidence, passed or not")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kind(s) {sorted(unknown)}; choose from {','.join(KINDS)}")
    preflight()
    work = args.work or Path(tempfile.mkdtemp(prefix="launcher-faults-", dir="/var/tmp"))
    wl = make_workload(work, args.model)
    trials = plan_trials(args.trials, args.seed, wl, kinds)
    if args.only:
        only = {int(i) for i in args.only.split(",")}
        trials = [t for t in trials if t.index in only]
    print(
        f"fault campaign: {len(trials)} trials, seed {args.seed}, {args.workers} at once; work dir {work}", flush=True
    )

    def show(r: TrialResult) -> None:
        print(describe(r) + (f"\n      evidence: {r.evidence}" if args.evidence and r.passed else ""), flush=True)

    result = run_campaign(trials, wl, args.workers, on_result=show)
    summary = result["summary"]
    print(json.dumps(summary, indent=1))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({"seed": args.seed, "trials_asked": args.trials, **result}, indent=1) + "\n")
    ok = summary["trials_passed"] == summary["trials_run"]
    if ok and args.work is None:
        shutil.rmtree(work, ignore_errors=True)  # kept when a trial failed: its logs are under <work>/kept/
    return 0 if ok else 1


# what tests/faults/test_fault_campaign.py uses
__all__ = [
    "KINDS",
    "TrialResult",
    "Workload",
    "describe",
    "main",
    "make_workload",
    "plan_trials",
    "run_campaign",
    "schedule",
]

if __name__ == "__main__":
    raise SystemExit(main())
