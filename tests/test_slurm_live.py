"""Against the live local Slurm (slurm/up.sh): arrays of worker jobs that claim units of work from the run dir, the
gather job, status, and faults.

Nothing is mocked: real sbatch/sacct/scontrol, real submitit, the HF backend on a tiny real model, fake GPUs that
Slurm hands out as it would real ones (a job with 2 of them runs 2 workers, each a process of its own). The faults are
real too: SIGKILL of a worker job's process, preemption by a job in the `high` partition, scancel then resubmit, a
real time limit, exceptions. Only their timing is arranged, through launcher/faults.py (LAUNCHER_FAULT_*: a worker
sleeps after each record so a signal lands mid-unit, or raises in a given unit a given number of times).

Every fault scenario checks the same three things: no record lost, none generated twice (in the units' chunk files,
not only after gather's dedup), and samples.jsonl byte-identical to the uninterrupted run's.

Wall time: the scenarios are independent, so one module fixture starts them all at once in threads (the e2e run's
worker jobs and the preemption share the 4 fake GPUs and run one after the other); each test then waits for its
own scenario and checks it. 2 real cores run everything: the whole module took 3-3.5 min here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import __version__
from launcher.store import read_jsonl
from launcher.submit.status import FINAL, RunStatus, collect

from .conftest import ROOT, USERS, write_jsonl
from .helpers import (
    attempts,
    chunk_files,
    chunk_rows,
    claim_owner,
    in_queue,
    job_failures,
    job_log,
    launcher,
    live,
    records_by,
    requeue_markers,
    run_json,
    sacct_states,
    submissions,
    submit,
    unit_done,
    unit_failures,
    wait_for,
    worker_reports,
)

pytestmark = pytest.mark.slurm

PROFILE = ROOT / "configs" / "slurm-local.yaml"
RECORDS = 9  # per dataset: 3 units of 3 in the e2e run
SCENARIO_TIMEOUT_S = 600
_stop = threading.Event()
_gpus_free = threading.Event()  # the e2e run's worker jobs have ended: the preemption scenario may take the GPUs


# ---------------------------------------------------------------- inputs and helpers


@dataclass
class Inputs:
    root: Path
    model: Path
    ds_a: Path
    ds_b: Path


@pytest.fixture(scope="module")
def inputs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("slurm-live")
    ds_a = write_jsonl(root / "data" / "ds_a.jsonl", USERS[:RECORDS])
    ds_b = write_jsonl(root / "data" / "ds_b.jsonl", [{**u, "user_id": f"b{u['user_id']}"} for u in USERS[:RECORDS]])
    return Inputs(root, tiny_model, ds_a, ds_b)


def write_spec(
    inp: Inputs,
    name: str,
    datasets: tuple[str, ...] = ("ds_a",),
    ablations: tuple[str, ...] = ("full",),
    per_shard: int = RECORDS,
    slurm: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> Path:
    """A job spec on the local cluster's profile (configs/slurm-local.yaml), as a user would write one."""
    spec = {
        "extends": str(PROFILE),
        "name": name,
        "model": {"path": str(inp.model), **(model or {})},
        "data": {
            "datasets": [{"name": d, "path": str(getattr(inp, d))} for d in datasets],
            "ablation_configs": list(ablations),
            "num_samples": 2,
            "records_per_shard": per_shard,
        },
        "sampling": {"max_tokens": 8, "seed": 7},
        # The e2e run goes first (its worker jobs take the 4 GPUs): the others are niced, and their 5 min limit
        # lets the backfill scheduler start them beside it (it reserves the whole node ahead for a waiting
        # higher-priority job, so only jobs that end before the e2e jobs' 20 min limit fit).
        "slurm": {"gpus_per_node": 0, "mem": "512M", "time": 5, "extra_args": {"nice": 100}, **(slurm or {})},
        "output": {"dir": str(inp.root / name), "chunk_records": 1},
    }
    path = inp.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def wait(
    what: str,
    check: Callable[[], Any],
    timeout_s: float = SCENARIO_TIMEOUT_S,
    every_s: float = 0.5,
    run_dir: Path | None = None,
) -> Any:
    return wait_for(what, check, timeout_s, every_s, stop=_stop, explain=lambda: diagnose(run_dir))


def diagnose(run_dir: Path | None) -> str:
    if run_dir is None:
        return ""
    lines = [json.dumps(collect(run_dir).as_json(), indent=1)[:4000]]
    for err in sorted((run_dir / "logs").glob("*_log.err"))[-3:]:
        lines.append(f"--- {err.name}\n" + "\n".join(err.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(lines)


def wait_gathered(run_dir: Path, timeout_s: float = SCENARIO_TIMEOUT_S) -> RunStatus:
    """Until the newest submission's gather job has ended (it starts once every worker job has ended: afterany)."""

    def ended() -> RunStatus | None:
        status = collect(run_dir)
        newest = submissions(run_dir)[-1]["gather_job_id"]
        ok = status.gather_job_id == newest and status.gather_state in FINAL
        return status if ok and all(j.state in FINAL for j in status.jobs) else None

    status: RunStatus = wait(f"gather job of {run_dir.name}", ended, timeout_s, 2.0, run_dir)
    return status


def chunk_count(run_dir: Path, unit_id: str = "*") -> int:
    return len(chunk_files(run_dir, unit_id))


def holder(run_dir: Path, unit_id: str) -> dict[str, Any] | None:
    """The unit's claim owner once it is a live process of this run's worker jobs (its environment says so)."""
    owner = claim_owner(run_dir, unit_id)
    pid = int(owner.get("pid") or 0)
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if pid else []
    except OSError:
        return None
    array = submissions(run_dir)[-1]["array_job_id"]
    return owner if f"SLURM_ARRAY_JOB_ID={array}".encode() in environ else None


def assert_nothing_lost_or_twice(run_dir: Path, reference: bytes, group: str = "ds_a/full") -> None:
    """0 lost, 0 duplicated (in the chunks themselves), and the bytes of the uninterrupted run."""
    rows = [row for _, row in chunk_rows(run_dir)]
    assert sorted(rows) == list(range(RECORDS)), f"chunks hold rows {sorted(rows)}: lost or generated twice"
    out = run_dir.parent.parent / group
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == RECORDS and manifest["samples"] == 2 * RECORDS
    assert (out / "samples.jsonl").read_bytes() == reference, "output differs from the uninterrupted run"


# ---------------------------------------------------------------- the scenarios (run concurrently)


@dataclass
class Outcome:
    run_dir: Path
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def scenario_e2e(inp: Inputs) -> Outcome:
    """2 datasets x 2 ablations x 3 units of 3 records = 12 units; auto: 2 worker jobs of 2 fake GPUs each, so
    4 workers (DP=2 per job, processes of their own on the CPU) claim the 12 units."""
    spec = write_spec(
        inp,
        "e2e",
        ("ds_a", "ds_b"),
        ("context_only", "full"),
        per_shard=3,
        slurm={"gpus_per_node": 2, "mem": "1G", "time": 20, "extra_args": {}},
    )
    run_dir, proc = submit(spec)
    outcome = Outcome(run_dir, notes={"stdout": proc.stdout})
    t0 = time.monotonic()
    try:
        wait(
            "e2e worker jobs", lambda: all(j.state in FINAL for j in collect(run_dir).jobs), run_dir=run_dir, every_s=2
        )
    finally:
        _gpus_free.set()
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_preempt(inp: Inputs) -> Outcome:
    """Preemption through the `high` partition. Waits for the e2e jobs to free the GPUs: the preemptor asks all 4,
    so the victim (the only other GPU job then) is the one Slurm must preempt. One worker job, 2 workers, 3 units."""
    wait("e2e jobs off the GPUs", _gpus_free.is_set)
    t0 = time.monotonic()
    # time > 50 min: below that, submitit calls every USR2 a timeout (its guaranteed time is negative)
    spec = write_spec(
        inp,
        "preempt",
        per_shard=3,
        slurm={"gpus_per_node": 2, "time": 60, "extra_args": {}},
        model={"hf_batch_size": 1},
    )
    # 4 s a record, 2 workers: ~14 s of work left after the first 2 records, for Slurm to schedule the preemptor
    # (it holds back while any job on the node is completing: 7 s seen)
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "4:1"})
    wait("2 records before preemption", lambda: chunk_count(run_dir) >= 2, run_dir=run_dir)
    chunks = chunk_count(run_dir)
    units = [f"ds_a.full.{i:04d}" for i in range(3)]
    held = {u: owner for u in units if not unit_done(run_dir, u) and (owner := claim_owner(run_dir, u))}
    high = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "high",
            "--gres=gpu:4",
            "-c",
            "1",
            "--mem=64M",
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    outcome = Outcome(run_dir, notes={"high_job": high.stdout.strip(), "chunks_at_preemption": chunks, "held": held})
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_crash(inp: Inputs) -> Outcome:
    """Unit 1 of 3 raises after 1 record, twice; max_retries 2 -> the job's third attempt finishes it. One worker
    job; hf_batch_size 1, so the worker claims the next unit only when it needs one. `submit --wait`."""
    t0 = time.monotonic()
    spec = write_spec(inp, "crash", per_shard=3, slurm={"max_retries": 2}, model={"hf_batch_size": 1})
    proc = launcher("submit", str(spec), "--wait", env={"LAUNCHER_FAULT_CRASH": "ds_a.full.0001:2:1"})
    run_dir = Path(re.search(r"run dir: (\S+)", proc.stdout).group(1))  # type: ignore[union-attr]
    return Outcome(
        run_dir,
        time.monotonic() - t0,
        {"wait_rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-3000:]},
    )


def scenario_sigkill(inp: Inputs) -> Outcome:
    """SIGKILL of the process of the worker job that holds unit 0 (DP=1: the worker runs in it), mid-unit: srun's
    status reaches the batch script's teardown, which records the failure and requeues; the unit is resumed from
    its chunks on disk, by the requeued job or by the other worker job (a dead owner's unit is free at once)."""
    t0 = time.monotonic()
    spec = write_spec(inp, "sigkill", per_shard=5, slurm={"jobs": 2})  # 2 units (5 + 4 records), 2 worker jobs
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "1:1"})
    unit = "ds_a.full.0000"
    owner = wait(
        "2 records before the kill", lambda: chunk_count(run_dir, unit) >= 2 and holder(run_dir, unit), run_dir=run_dir
    )
    job = int(owner["worker"].split(".")[0])
    chunks = chunk_count(run_dir, unit)
    job_pid = live(run_dir, job).get("pid")
    os.kill(owner["pid"], signal.SIGKILL)
    outcome = Outcome(
        run_dir,
        notes={"killed": owner, "job": job, "job_pid": job_pid, "chunks_at_kill": chunks, "killed_at": time.time()},
    )
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_timeout(inp: Inputs) -> Outcome:
    """time=1 min: Slurm's USR2 comes 25-55 s into each attempt (signal_delay 5 s; it checks every 30 s). The first
    two attempts are slowed so each must time out; the third runs at full speed. 20 s after each record: an attempt
    writes at most 3 of the 9 records (at ~0, 20 and 40 s), so the second always has >= 6 left (> 100 s) and can never
    finish before its signal. (At 8 s a record a late first signal left the second attempt 2 records, done in < 25 s:
    it ended before Slurm signalled it, and CI saw one requeue instead of two.)"""
    t0 = time.monotonic()
    spec = write_spec(inp, "timeout", slurm={"time": 1, "signal_delay_s": 5, "max_requeues": 4})
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "20:2"})
    wait_gathered(run_dir)
    return Outcome(run_dir, time.monotonic() - t0)


def scenario_resubmit(inp: Inputs) -> Outcome:
    """scancel mid-run, then `launcher submit` again: done units are skipped, the cut one resumes from its chunks."""
    t0 = time.monotonic()
    spec = write_spec(inp, "resubmit", per_shard=3, slurm={"array_parallelism": 1}, model={"hf_batch_size": 1})
    env = {"LAUNCHER_FAULT_SLOW_S": "4"}  # 3 records x 4 s a unit: a wide window to cut one in the middle
    run_dir, _ = submit(spec, env=env)
    first, second = "ds_a.full.0000", "ds_a.full.0001"
    wait("unit 0 under way", lambda: chunk_count(run_dir, first) >= 1, run_dir=run_dir)
    refused = launcher("submit", str(spec), env=env)  # a second set of jobs would count retries against the wrong one
    wait(
        "unit 0 done, unit 1 under way",
        lambda: unit_done(run_dir, first) and chunk_count(run_dir, second) >= 1,
        every_s=0.2,
        run_dir=run_dir,
    )
    cut = {u: chunk_count(run_dir, u) for u in (first, second)}
    array = submissions(run_dir)[0]["array_job_id"]
    subprocess.run(["scancel", array], check=True)
    wait("the worker job to leave Slurm", lambda: not in_queue(array), run_dir=run_dir)
    chunks_before = {p.relative_to(run_dir): p.read_bytes() for p in chunk_files(run_dir)}
    resubmitted_at = time.time()
    _, again = submit(spec, env={})
    outcome = Outcome(
        run_dir,
        notes={
            "refused": refused,
            "again": again.stdout,
            "chunks_before": chunks_before,
            "cut": cut,
            "resubmitted_at": resubmitted_at,
        },
    )
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_states(inp: Inputs) -> Outcome:
    """3 units, one worker job; the last unit always crashes and max_retries is 0: status must show the job RUNNING
    with unit 0 RUNNING (its worker named) and the others PENDING, then DONE, DONE, FAILED with the error."""
    t0 = time.monotonic()
    spec = write_spec(
        inp, "states", per_shard=3, slurm={"array_parallelism": 1, "max_retries": 0}, model={"hf_batch_size": 1}
    )
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "2", "LAUNCHER_FAULT_CRASH": "ds_a.full.0002:99:1"})
    seen: list[RunStatus] = []

    def running_and_pending() -> bool:
        status = collect(run_dir)
        seen.append(status)
        units = status.units
        return (
            [j.state for j in status.jobs] == ["RUNNING"]
            and units[0].state == "RUNNING"
            and all(u.state == "PENDING" for u in units[1:])
        )

    wait("unit 0 running, 1 and 2 pending", running_and_pending, every_s=0.3, run_dir=run_dir)
    outcome = Outcome(
        run_dir, notes={"while_running": seen[-1], "status_running": launcher("status", str(run_dir)).stdout}
    )
    final = wait_gathered(run_dir)
    outcome.notes["final"] = final
    outcome.notes["status_cli"] = launcher("status", str(run_dir), "--json")
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_held_cancel(inp: Inputs) -> Outcome:
    """A held worker job: status says PENDING (JobHeldUser); `launcher cancel` ends it and its gather job."""
    t0 = time.monotonic()
    spec = write_spec(inp, "held", per_shard=3, slurm={"extra_args": {"hold": True, "nice": 100}})
    run_dir, _ = submit(spec)
    held = wait(
        "held jobs",
        lambda: (s := collect(run_dir)) and s.jobs and all(j.state == "PENDING" for j in s.jobs) and s,
        run_dir=run_dir,
    )
    cancel = launcher("cancel", str(run_dir))
    cancelled = wait(
        "cancelled in sacct",
        lambda: (
            (s := collect(run_dir))
            and s.gather_state == "CANCELLED"
            and all(j.state == "CANCELLED" for j in s.jobs)
            and s
        ),
        timeout_s=60,
        run_dir=run_dir,
    )
    again = launcher("cancel", str(run_dir))
    return Outcome(
        run_dir, time.monotonic() - t0, {"held": held, "cancel": cancel, "cancelled": cancelled, "again": again}
    )


@pytest.fixture(scope="module")
def scenarios(inputs: Inputs) -> Any:
    """Start every scenario at once; tests wait for the one they check. At the end, cancel whatever is left."""
    _stop.clear()
    _gpus_free.clear()
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="scenario")
    started = time.monotonic()
    futures: dict[str, Future[Outcome]] = {}
    futures["e2e"] = pool.submit(scenario_e2e, inputs)
    for name, fn in (
        ("timeout", scenario_timeout),
        ("crash", scenario_crash),
        ("sigkill", scenario_sigkill),
        ("resubmit", scenario_resubmit),
        ("states", scenario_states),
        ("held", scenario_held_cancel),
    ):
        futures[name] = pool.submit(fn, inputs)
    futures["preempt"] = pool.submit(scenario_preempt, inputs)
    yield futures
    _stop.set()

    def cancel_all() -> None:
        for path in inputs.root.glob("*/runs/*"):
            if (path / "run.json").exists():
                launcher("cancel", str(path))

    cancel_all()  # ends the waits (a `submit --wait` too), then again: a scenario may have submitted meanwhile
    pool.shutdown(wait=True)
    cancel_all()
    timings = {name: round(f.result().seconds, 1) for name, f in futures.items() if f.done() and not f.exception()}
    print(f"\nslurm live scenarios: {json.dumps(timings)}; all done {time.monotonic() - started:.0f}s after the start")


def outcome(scenarios: dict[str, Future[Outcome]], name: str) -> Outcome:
    return scenarios[name].result(timeout=SCENARIO_TIMEOUT_S + 60)


@pytest.fixture(scope="module")
def reference(scenarios: dict[str, Future[Outcome]]) -> bytes:
    """ds_a/full of the uninterrupted e2e run: what every fault scenario must reproduce byte for byte."""
    e2e = outcome(scenarios, "e2e")
    return (e2e.run_dir.parent.parent / "ds_a" / "full" / "samples.jsonl").read_bytes()


# ---------------------------------------------------------------- tests


def test_submit_1000_worker_jobs_under_5s(inputs: Inputs) -> None:
    """`launcher submit` of 1,000 units as a 1,000-element array of worker jobs, end to end in a fresh process, held
    so that nothing runs."""
    data = write_jsonl(
        inputs.root / "data" / "thousand.jsonl", [{"user_id": f"u{i:04d}", "context": "x"} for i in range(1000)]
    )
    spec = write_spec(inputs, "thousand", per_shard=1, slurm={"jobs": 1000, "extra_args": {"hold": True}})
    text = yaml.safe_load(spec.read_text())
    text["data"]["datasets"][0]["path"] = str(data)
    spec.write_text(yaml.safe_dump(text))
    t0 = time.perf_counter()
    run_dir, proc = submit(spec)
    seconds = time.perf_counter() - t0
    try:
        sub = submissions(run_dir)[0]
        assert len(sub["job_ids"]) == 1000 and sub["job_indices"] == list(range(1000)) and sub["units_todo"] == 1000
        assert "1000 unit(s) to do; 1000 worker job(s) submitted as array" in proc.stdout, proc.stdout
        queued = subprocess.run(
            ["squeue", "-h", "-r", "-j", sub["array_job_id"], "-o", "%i"], capture_output=True, text=True
        ).stdout.split()
        assert len(queued) == 1000, "one array element per worker job, all queued, none capped by submitit's %256"
    finally:
        assert launcher("cancel", str(run_dir)).returncode == 0
    print(f"\nlauncher submit, 1000 worker jobs: {seconds:.2f}s")
    assert seconds < 5.0


def test_e2e_array_with_gpus_gather_and_run_json(scenarios: dict[str, Future[Outcome]]) -> None:
    e2e = outcome(scenarios, "e2e")
    run_dir = e2e.run_dir
    status = collect(run_dir)
    assert status.gather_state == "COMPLETED", diagnose(run_dir)
    assert status.counts == {"DONE": 12} and [j.state for j in status.jobs] == ["COMPLETED"] * 2
    assert re.search(
        r"12 unit\(s\) to do; 2 worker job\(s\) submitted as array \d+; gather job \d+", e2e.notes["stdout"]
    ), e2e.notes["stdout"]

    run = run_json(run_dir)
    sub = run["submissions"][0]
    assert run["run_id"] == run_dir.name and run["launcher_version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}", run["git_sha"] or ""), run["git_sha"]
    assert run["image"]["runtime"] == "none" and run["image"]["python"]
    assert run["spec"]["slurm"]["partition"] == "debug" and run["spec"]["slurm"]["gpus_per_node"] == 2  # the profile
    assert run["units"] == 12 and run["jobs"] == 2 and run["records"] == 4 * RECORDS
    assert len(sub["job_ids"]) == 2 and all(j.startswith(f"{sub['array_job_id']}_") for j in sub["job_ids"])
    assert sub["gather_job_id"] and sub["submitted_at"] and sub["job_indices"] == [0, 1] and sub["units_todo"] == 12

    # each worker job counted its 2 GPUs and ran one worker (a process of its own) per GPU
    gpu_sets = set()
    reports = worker_reports(run_dir)
    for job in (0, 1):
        (attempt,) = attempts(run_dir, job)
        layout = attempt["layout"]
        assert layout["data_parallel_size"] == 2 and layout["tensor_parallel_size"] == 1, layout
        assert len(layout["gpus"]) == 2 and set(layout["gpus"]) <= {"0", "1", "2", "3"}, layout
        gpu_sets.add(tuple(layout["gpus"]))
        mine = [r for r in reports if r["job_index"] == job]
        assert sorted(r["slot"] for r in mine) == [f"{job}.0", f"{job}.1"] and attempt["workers"] == [
            f"{job}.0",
            f"{job}.1",
        ]
        assert sorted(g for r in mine for g in r["gpus"]) == sorted(layout["gpus"]), "one GPU per worker"
        assert all(r["job_id"] and r["state"] in ("done", "idle") for r in mine), mine
        assert all(r["units_done"] for r in mine if r["state"] == "done")
    assert len(gpu_sets) == 2, f"the two jobs ran at once on the 4 GPUs: {gpu_sets}"
    e2e.notes["gpu_sets"] = sorted(gpu_sets)
    # every unit done exactly once, by one of the workers, each of which started its engine once
    done_by = [set(r["units_done"]) for r in reports]
    assert sum(len(d) for d in done_by) == 12 and set().union(*done_by) == {u.unit_id for u in status.units}
    assert sum(1 for r in reports if r.get("engine_ready_at")) == sum(1 for r in reports if r["units_done"])
    assert sum(1 for r in reports if r["units_done"]) >= 2, "the units were shared between workers"

    out = run_dir.parent.parent
    written = {}
    for ds in ("ds_a", "ds_b"):
        for ablation in ("context_only", "full"):
            group = out / ds / ablation
            rows = list(read_jsonl(group / "samples.jsonl"))
            assert [r["row"] for r in rows] == list(range(RECORDS))
            assert all(len(r["generated_samples"]) == 2 for r in rows)
            summary = json.loads((group / "inference_summary.json").read_text())
            assert summary["total_samples"] == 2 * RECORDS and summary["data_parallel_size"] == 2
            assert summary["units"] == 3
            manifest = json.loads((group / "manifest.json").read_text())
            from launcher.store import sha256_file

            assert all(sha256_file(group / f) == m["sha256"] for f, m in manifest["files"].items())
            written.update({p: p.read_bytes() for p in group.rglob("*") if p.is_file()})
    # `launcher gather` by hand after the gather job: verifies again and rewrites the same bytes
    proc = launcher("gather", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert written == {p: p.read_bytes() for p in written}
    assert "DP=2" in proc.stdout
    st = launcher("status", str(run_dir), "--json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["counts"] == {"DONE": 12} and data["gather"]["state"] == "COMPLETED"
    assert sorted(w["worker"] for w in data["workers"]) == ["0.0", "0.1", "1.0", "1.1"]
    assert data["run"]["samples"] == 2 * 4 * RECORDS


def test_crash_twice_then_success(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    crash = outcome(scenarios, "crash")
    run_dir, unit = crash.run_dir, "ds_a.full.0001"
    assert crash.notes["wait_rc"] == 0, crash.notes["stdout"] + crash.notes["stderr"]
    failures = job_failures(run_dir, 0)
    assert [f["failures"] for f in failures] == [1, 2] and all(f["retry"] for f in failures)
    assert all("InjectedFault" in f["error"] and f["kind"] == "exception" for f in failures)
    assert any("InjectedFault" in line for line in failures[0]["log_tail"]), "the record carries the log tail"
    # the unit keeps its own count: the crash happened in it, twice, and nowhere else
    assert [("InjectedFault" in f["error"]) for f in unit_failures(run_dir, unit)] == [True, True]
    for other in ("ds_a.full.0000", "ds_a.full.0002"):
        assert not unit_failures(run_dir, other), other
    assert live(run_dir, 0)["restart"] == 2  # the same Slurm job, requeued twice
    (third,) = [r for r in worker_reports(run_dir) if r["restart"] == 2]
    assert records_by(third, unit, 2) == 1, "the third attempt resumed the unit: 2 of its records were done"
    assert unit_done(run_dir, "ds_a.full.0000")["generation"] == 0, "a unit done before the crash is not redone"
    assert unit_done(run_dir, unit)["generation"] == 2
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_sigkill_of_the_worker_jobs_process(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    killed = outcome(scenarios, "sigkill")
    run_dir, unit, job = killed.run_dir, "ds_a.full.0000", killed.notes["job"]
    owner = killed.notes["killed"]
    assert owner["pid"] == killed.notes["job_pid"], "DP=1: the worker runs in its job's own process"
    (failure,) = job_failures(run_dir, job)
    assert failure["kind"] == "died" and "SIGKILL" in failure["error"] and failure["retry"], failure
    assert live(run_dir, job)["restart"] == 1 and live(run_dir, job)["pid"] != owner["pid"]
    assert 2 <= killed.notes["chunks_at_kill"] < 5
    # resumed from the chunks, by whichever worker took the dead owner's claim over
    done = unit_done(run_dir, unit)
    assert done["generation"] > owner["generation"]
    (finisher,) = [r for r in worker_reports(run_dir) if unit in r["units_done"]]
    assert finisher["pid"] != owner["pid"]
    assert records_by(finisher, unit, 2) <= 5 - killed.notes["chunks_at_kill"], "resumed, not started over"
    assert submissions(run_dir)[0]["job_ids"][job].endswith(f"_{job}"), "an array element"
    other = 1 - job
    assert not job_failures(run_dir, other) and live(run_dir, other)["restart"] == 0
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_preemption_by_high_partition(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    pre = outcome(scenarios, "preempt")
    run_dir = pre.run_dir
    job = submissions(run_dir)[0]["job_ids"][0]
    (marker,) = requeue_markers(run_dir, 0)
    assert marker["restart"] == 0 and "USR2" in marker["why"]
    log = job_log(run_dir, job).read_text()
    assert "this job is preempted" in log, log[-2000:]
    assert sacct_states(pre.notes["high_job"]) == ["COMPLETED"]
    assert sacct_states(job.split("_")[0])[0] in {"PREEMPTED", "REQUEUED"}
    assert not job_failures(run_dir, 0), "a preemption is not a failure"
    assert not any(unit_failures(run_dir, f"ds_a.full.{i:04d}") for i in range(3))
    assert live(run_dir, 0)["restart"] == 1
    reports = worker_reports(run_dir)
    before = [r for r in reports if r["restart"] == 0]
    after = [r for r in reports if r["restart"] == 1]
    assert sorted(r["slot"] for r in before) == sorted(r["slot"] for r in after) == ["0.0", "0.1"], (
        "DP=2 on the 2 fake GPUs, before and after the preemption"
    )
    assert all(r["state"] == "preempted" for r in before), [r["state"] for r in before]
    assert sum(r["records"] for r in after) <= RECORDS - pre.notes["chunks_at_preemption"]
    # the units the workers held were given back (released), and taken again after the requeue
    assert pre.notes["held"], "no unit was mid-way when the preemptor came"
    for unit, owner in pre.notes["held"].items():
        assert claim_owner(run_dir, unit, owner["generation"])["released"], unit
        assert unit_done(run_dir, unit)["generation"] > owner["generation"], unit
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_timeout_needs_two_requeues(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    to = outcome(scenarios, "timeout")
    run_dir = to.run_dir
    markers = requeue_markers(run_dir, 0)
    assert [m["restart"] for m in markers][:2] == [0, 1], markers
    assert live(run_dir, 0)["restart"] >= 2 and not job_failures(run_dir, 0)
    assert not unit_failures(run_dir, "ds_a.full.0000"), "a time limit is not a failure of the unit it cut"
    job = submissions(run_dir)[0]["job_ids"][0]
    log = job_log(run_dir, job).read_text()
    assert log.count("this job is timed-out") >= 2, log[-2000:]
    # claimed again after the time limit(s) (an attempt that Slurm cuts before its worker claimed takes none)
    assert unit_done(run_dir, "ds_a.full.0000")["generation"] >= 1
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_scancel_then_resubmit_resumes(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    res = outcome(scenarios, "resubmit")
    run_dir = res.run_dir
    refused = res.notes["refused"]
    assert refused.returncode == 2 and "still has" in refused.stderr and "launcher cancel" in refused.stderr
    first, second = submissions(run_dir)
    assert first["units_todo"] == 3 and second["units_todo"] == 2  # the done unit is skipped
    assert "2 unit(s) to do, 1 already done; 1 worker job(s)" in res.notes["again"], res.notes["again"]
    assert 1 <= res.notes["cut"]["ds_a.full.0001"] < 3, f"unit 1 was not cut mid-way: {res.notes['cut']}"
    (resumed,) = [r for r in worker_reports(run_dir) if r["started"] >= res.notes["resubmitted_at"]]
    assert records_by(resumed, "ds_a.full.0001", 2) <= 3 - res.notes["cut"]["ds_a.full.0001"]
    assert unit_done(run_dir, "ds_a.full.0000")["generation"] == 0
    assert unit_done(run_dir, "ds_a.full.0001")["generation"] >= 1
    after = {p.relative_to(run_dir): p.read_bytes() for p in chunk_files(run_dir)}
    assert all(after[name] == data for name, data in res.notes["chunks_before"].items()), "kept chunks were rewritten"
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_status_running_pending_failed(scenarios: dict[str, Future[Outcome]]) -> None:
    st = outcome(scenarios, "states")
    run_dir = st.run_dir
    running: RunStatus = st.notes["while_running"]
    assert [(u.state, u.owner) for u in running.units] == [("RUNNING", "0.0"), ("PENDING", ""), ("PENDING", "")]
    assert [(w.worker, w.state) for w in running.workers] in (
        [],
        [("0.0", "starting")],
        [("0.0", "loading")],
        [("0.0", "running")],
    ), running.workers
    text = st.notes["status_running"]
    assert "RUNNING" in text and "ds_a.full.0001" in text and "PENDING" in text, text
    final: RunStatus = st.notes["final"]
    assert [u.state for u in final.units] == ["DONE", "DONE", "FAILED"]
    failed = final.units[2]
    assert failed.failures == 1 and "InjectedFault" in failed.last_error
    (job,) = final.jobs
    assert job.state == "FAILED" and job.failures == 1 and "InjectedFault" in job.last_error
    assert final.gather_state == "FAILED"  # gather refuses incomplete outputs, loudly
    cli = st.notes["status_cli"]
    assert cli.returncode == 1, "status exits 1 when a unit has failed"
    data = json.loads(cli.stdout)
    assert data["counts"] == {"DONE": 2, "FAILED": 1} and data["gather"]["state"] == "FAILED"
    (record,) = job_failures(run_dir, 0)
    assert record["retry"] is False and record["max_retries"] == 0 and record["log_tail"]
    gather_err = job_log(run_dir, final.gather_job_id or "", "err").read_text()
    assert "ds_a.full.0002" in gather_err and "fix:" in gather_err


def test_status_held_and_cancel(scenarios: dict[str, Future[Outcome]]) -> None:
    held = outcome(scenarios, "held")
    assert all(j.reason == "JobHeldUser" for j in held.notes["held"].jobs)
    assert all(u.state == "PENDING" for u in held.notes["held"].units)
    assert held.notes["cancel"].returncode == 0 and "cancelled" in held.notes["cancel"].stdout
    assert held.notes["cancelled"].gather_state == "CANCELLED"
    assert "nothing to cancel" in held.notes["again"].stdout
