"""Against the live local Slurm (slurm/up.sh): submitit arrays over datasets, the gather job, status, and faults.

Nothing is mocked: real sbatch/sacct/scontrol, real submitit, the HF backend on a tiny real model, fake GPUs that
Slurm hands out as it would real ones. The faults are real too: SIGKILL of the task's process, preemption by a
job in the `high` partition, scancel then resubmit, a real time limit, exceptions. Only their timing is arranged,
through launcher/faults.py (LAUNCHER_FAULT_*: a task sleeps after each record so a signal lands mid-task, or
raises a given number of times).

Every fault scenario checks the same three things: no record lost, none generated twice (in the task's chunk
files, not only after gather's dedup), and samples.jsonl byte-identical to the uninterrupted run's.

Wall time: the scenarios are independent, so one module fixture starts them all at once in threads (the array of
the e2e run and the preemption share the 4 fake GPUs and run one after the other); each test then waits for its
own scenario and checks it. 2 real cores run everything, so the whole module takes ~4-6 min.
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
from launcher.status import FINAL, RunStatus, collect

from .conftest import ROOT, USERS, launcher, write_jsonl

pytestmark = pytest.mark.slurm

PROFILE = ROOT / "configs" / "slurm-local.yaml"
RECORDS = 9  # per dataset: 3 shards of 3 in the e2e run
SCENARIO_TIMEOUT_S = 600
_stop = threading.Event()
_gpus_free = threading.Event()  # the e2e array's tasks have ended: the preemption scenario may take the GPUs


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


def write_spec(inp: Inputs, name: str, datasets: tuple[str, ...] = ("ds_a",), ablations: tuple[str, ...] = ("full",),
               per_shard: int = RECORDS, slurm: dict[str, Any] | None = None) -> Path:
    """A job spec on the local cluster's profile (configs/slurm-local.yaml), as a user would write one."""
    spec = {
        "extends": str(PROFILE),
        "name": name,
        "model": {"path": str(inp.model)},
        "data": {"datasets": [{"name": d, "path": str(getattr(inp, d))} for d in datasets],
                 "ablation_configs": list(ablations), "num_samples": 2, "records_per_shard": per_shard},
        "sampling": {"max_tokens": 8, "seed": 7},
        # The e2e array goes first (its tasks wait for the 4 GPUs in pairs): the others are niced, and their
        # 5 min limit lets the backfill scheduler start them beside it (it reserves the whole node ahead for a
        # waiting higher-priority job, so only jobs that end before the e2e tasks' 20 min limit fit).
        "slurm": {"gpus_per_node": 0, "mem": "512M", "time": 5, "extra_args": {"nice": 100}, **(slurm or {})},
        "output": {"dir": str(inp.root / name), "chunk_records": 1},
    }
    path = inp.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def submit(spec: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[Path, subprocess.CompletedProcess[str]]:
    proc = launcher("submit", str(spec), *extra, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"run dir: (\S+)", proc.stdout)
    assert match, proc.stdout
    return Path(match.group(1)), proc


def run_json(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = SCENARIO_TIMEOUT_S, every_s: float = 0.5,
             run_dir: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _stop.is_set():
            raise RuntimeError(f"stopped while waiting for {what}")
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s\n{diagnose(run_dir)}")


def diagnose(run_dir: Path | None) -> str:
    if run_dir is None:
        return ""
    lines = [json.dumps(collect(run_dir).as_json(), indent=1)[:4000]]
    for err in sorted((run_dir / "logs").glob("*_log.err"))[-3:]:
        lines.append(f"--- {err.name}\n" + "\n".join(err.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(lines)


def wait_gathered(run_dir: Path, timeout_s: float = SCENARIO_TIMEOUT_S) -> RunStatus:
    """Until the newest submission's gather job has ended (it starts once every task has ended: afterany)."""
    def ended() -> RunStatus | None:
        status = collect(run_dir)
        newest = run_json(run_dir)["submissions"][-1]["gather_job_id"]
        ok = status.gather_job_id == newest and status.gather_state in FINAL
        return status if ok and all(t.state in FINAL for t in status.tasks) else None
    status: RunStatus = wait_for(f"gather job of {run_dir.name}", ended, timeout_s, 2.0, run_dir)
    return status


def task_dir(run_dir: Path, task_id: str) -> Path:
    return run_dir / "tasks" / task_id


def chunk_count(run_dir: Path, task_id: str) -> int:
    chunks = task_dir(run_dir, task_id) / "chunks"
    return len(list(chunks.glob("chunk-*.jsonl"))) if chunks.is_dir() else 0


def chunk_rows(run_dir: Path) -> list[int]:
    """Every row in every chunk file of every task: what was generated, duplicates included."""
    return [json.loads(line)["row"] for path in sorted(run_dir.glob("tasks/*/chunks/chunk-*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def requeue_markers(run_dir: Path, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((task_dir(run_dir, task_id) / "requeues").glob("*.json"))]


def failure_records(run_dir: Path, task_id: str) -> list[dict[str, Any]]:
    from launcher.retries import read_failures

    return read_failures(task_dir(run_dir, task_id))


def live(run_dir: Path, task_id: str) -> dict[str, Any]:
    path = task_dir(run_dir, task_id) / "live.json"
    return json.loads(path.read_text()) if path.exists() else {}


def last_attempt(run_dir: Path, task_id: str) -> dict[str, Any]:
    files = sorted((task_dir(run_dir, task_id) / "attempts").glob("attempt-*.json"))
    data: dict[str, Any] = json.loads(files[-1].read_text())
    return data


def sacct_states(job_id: str) -> list[str]:
    """Every record of a job, requeued attempts included (-D), oldest first."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "State"], capture_output=True,
                         text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def assert_nothing_lost_or_twice(run_dir: Path, reference: bytes, group: str = "ds_a/full") -> None:
    """0 lost, 0 duplicated (in the chunks themselves), and the bytes of the uninterrupted run."""
    rows = chunk_rows(run_dir)
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
    """2 datasets x 2 ablations x 3 shards, 2 fake GPUs per task (-> DP=2 replicas on the CPU)."""
    spec = write_spec(inp, "e2e", ("ds_a", "ds_b"), ("context_only", "full"), per_shard=3,
                      slurm={"gpus_per_node": 2, "mem": "1G", "time": 20, "extra_args": {}})
    run_dir, proc = submit(spec)
    outcome = Outcome(run_dir, notes={"stdout": proc.stdout})
    t0 = time.monotonic()
    try:
        wait_for("e2e tasks", lambda: all(t.state in FINAL for t in collect(run_dir).tasks), run_dir=run_dir, every_s=2)
    finally:
        _gpus_free.set()
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_preempt(inp: Inputs) -> Outcome:
    """Preemption through the `high` partition. Waits for the e2e tasks to free the GPUs: the preemptor asks all 4,
    so the victim (the only other GPU job then) is the one Slurm must preempt."""
    wait_for("e2e tasks off the GPUs", _gpus_free.is_set)
    t0 = time.monotonic()
    # time > 50 min: below that, submitit calls every USR2 a timeout (its guaranteed time is negative)
    spec = write_spec(inp, "preempt", slurm={"gpus_per_node": 2, "time": 60, "extra_args": {}})
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "1.5:1"})
    task = "ds_a.full.0000"
    wait_for("2 records before preemption", lambda: chunk_count(run_dir, task) >= 2, run_dir=run_dir)
    chunks = chunk_count(run_dir, task)
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "--gres=gpu:4", "-c", "1", "--mem=64M",
                           "-o", "/dev/null", "--wrap", "true"], capture_output=True, text=True, check=True)
    outcome = Outcome(run_dir, notes={"high_job": high.stdout.strip(), "chunks_at_preemption": chunks})
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_crash(inp: Inputs) -> Outcome:
    """Task 1 of 3 raises after 2 records, twice; max_retries 2 -> the third attempt finishes. `submit --wait`."""
    t0 = time.monotonic()
    spec = write_spec(inp, "crash", per_shard=3, slurm={"max_retries": 2})
    proc = launcher("submit", str(spec), "--wait", env={"LAUNCHER_FAULT_CRASH": "ds_a.full.0001:2:1"})
    run_dir = Path(re.search(r"run dir: (\S+)", proc.stdout).group(1))  # type: ignore[union-attr]
    return Outcome(run_dir, time.monotonic() - t0, {"wait_rc": proc.returncode, "stdout": proc.stdout,
                                                    "stderr": proc.stderr[-3000:]})


def scenario_sigkill(inp: Inputs) -> Outcome:
    """SIGKILL of the task's process mid-task: srun's status reaches the batch script's teardown, which records the
    failure and requeues; the next attempt resumes from the chunks on disk."""
    t0 = time.monotonic()
    spec = write_spec(inp, "sigkill", per_shard=5)  # 2 tasks (5 + 4 records): the array path of the teardown
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "1:1"})
    task = "ds_a.full.0000"
    wait_for("2 records before the kill", lambda: chunk_count(run_dir, task) >= 2 and live(run_dir, task),
             run_dir=run_dir)
    info = live(run_dir, task)
    chunks = chunk_count(run_dir, task)
    os.kill(info["pid"], signal.SIGKILL)
    outcome = Outcome(run_dir, notes={"killed_pid": info["pid"], "chunks_at_kill": chunks})
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_timeout(inp: Inputs) -> Outcome:
    """time=1 min: Slurm's USR2 comes 25-55 s into each attempt (signal_delay 5 s; it checks every 30 s). The first
    two attempts are slowed (9 records x 8 s) so each must time out; the third runs at full speed."""
    t0 = time.monotonic()
    spec = write_spec(inp, "timeout", slurm={"time": 1, "signal_delay_s": 5, "max_requeues": 4})
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "8:2"})
    wait_gathered(run_dir)
    return Outcome(run_dir, time.monotonic() - t0)


def scenario_resubmit(inp: Inputs) -> Outcome:
    """scancel mid-run, then `launcher submit` again: done tasks are skipped, the cut one resumes from its chunks."""
    t0 = time.monotonic()
    spec = write_spec(inp, "resubmit", per_shard=3, slurm={"array_parallelism": 1})
    env = {"LAUNCHER_FAULT_SLOW_S": "4"}  # 3 records x 4 s a task: a wide window to cut one in the middle
    run_dir, _ = submit(spec, env=env)
    first, second = "ds_a.full.0000", "ds_a.full.0001"
    wait_for("task 0 under way", lambda: chunk_count(run_dir, first) >= 1, run_dir=run_dir)
    refused = launcher("submit", str(spec), env=env)  # a second array of a running run would write the same tasks
    wait_for("task 0 done, task 1 under way",
             lambda: (task_dir(run_dir, first) / "done.json").exists() and chunk_count(run_dir, second) >= 1,
             every_s=0.2, run_dir=run_dir)
    cut = {t: chunk_count(run_dir, t) for t in (first, second)}
    array = run_json(run_dir)["submissions"][0]["array_job_id"]
    subprocess.run(["scancel", array], check=True)
    wait_for("the array to leave Slurm", lambda: not subprocess.run(["squeue", "-h", "-j", array], capture_output=True,
                                                                    text=True).stdout.strip())
    chunks_before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.glob("tasks/*/chunks/*.jsonl")}
    _, again = submit(spec, env={})
    outcome = Outcome(run_dir, notes={"refused": refused, "again": again.stdout, "chunks_before": chunks_before,
                                      "cut": cut})
    wait_gathered(run_dir)
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_states(inp: Inputs) -> Outcome:
    """3 tasks, one at a time (array_parallelism 1), the last one always crashes and max_retries is 0: status must
    show RUNNING + PENDING (JobArrayTaskLimit) while it runs, then DONE, DONE, FAILED with the error."""
    t0 = time.monotonic()
    spec = write_spec(inp, "states", per_shard=3, slurm={"array_parallelism": 1, "max_retries": 0})
    run_dir, _ = submit(spec, env={"LAUNCHER_FAULT_SLOW_S": "0.5", "LAUNCHER_FAULT_CRASH": "ds_a.full.0002:99:1"})
    seen: list[list[tuple[str, str]]] = []

    def running_and_pending() -> bool:
        rows = collect(run_dir).tasks
        seen.append([(t.state, t.reason) for t in rows])
        return rows[0].state == "RUNNING" and all(t.state == "PENDING" for t in rows[1:])
    wait_for("task 0 running, 1 and 2 pending", running_and_pending, every_s=0.3, run_dir=run_dir)
    outcome = Outcome(run_dir, notes={"while_running": seen[-1],
                                      "status_running": launcher("status", str(run_dir)).stdout})
    final = wait_gathered(run_dir)
    outcome.notes["final"] = final
    outcome.notes["status_cli"] = launcher("status", str(run_dir), "--json")
    outcome.seconds = time.monotonic() - t0
    return outcome


def scenario_held_cancel(inp: Inputs) -> Outcome:
    """A held array: status says PENDING (JobHeldUser); `launcher cancel` ends it and its gather job."""
    t0 = time.monotonic()
    spec = write_spec(inp, "held", per_shard=3, slurm={"extra_args": {"hold": True, "nice": 100}})
    run_dir, _ = submit(spec)
    held = wait_for("held tasks", lambda: (s := collect(run_dir)) and all(t.state == "PENDING" for t in s.tasks) and s,
                    run_dir=run_dir)
    cancel = launcher("cancel", str(run_dir))
    cancelled = wait_for("cancelled in sacct", lambda: (s := collect(run_dir)) and s.gather_state == "CANCELLED"
                         and all(t.state == "CANCELLED" for t in s.tasks) and s, timeout_s=60, run_dir=run_dir)
    again = launcher("cancel", str(run_dir))
    return Outcome(run_dir, time.monotonic() - t0, {"held": held, "cancel": cancel, "cancelled": cancelled,
                                                    "again": again})


@pytest.fixture(scope="module")
def scenarios(inputs: Inputs) -> Any:
    """Start every scenario at once; tests wait for the one they check. At the end, cancel whatever is left."""
    _stop.clear()
    _gpus_free.clear()
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="scenario")
    started = time.monotonic()
    futures: dict[str, Future[Outcome]] = {}
    futures["e2e"] = pool.submit(scenario_e2e, inputs)
    for name, fn in (("timeout", scenario_timeout), ("crash", scenario_crash), ("sigkill", scenario_sigkill),
                     ("resubmit", scenario_resubmit), ("states", scenario_states), ("held", scenario_held_cancel)):
        futures[name] = pool.submit(fn, inputs)
    futures["preempt"] = pool.submit(scenario_preempt, inputs)
    yield futures
    _stop.set()
    for path in inputs.root.glob("*/runs/*"):
        if (path / "run.json").exists():
            launcher("cancel", str(path))
    pool.shutdown(wait=True)
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

def test_submit_1000_tasks_under_5s(inputs: Inputs) -> None:
    """`launcher submit` of a 1,000-task array, end to end in a fresh process, held so that nothing runs."""
    data = write_jsonl(inputs.root / "data" / "thousand.jsonl", [{"user_id": f"u{i:04d}", "context": "x"}
                                                                 for i in range(1000)])
    spec = write_spec(inputs, "thousand", per_shard=1, slurm={"extra_args": {"hold": True}})
    text = yaml.safe_load(spec.read_text())
    text["data"]["datasets"][0]["path"] = str(data)
    spec.write_text(yaml.safe_dump(text))
    t0 = time.perf_counter()
    run_dir, proc = submit(spec)
    seconds = time.perf_counter() - t0
    try:
        sub = run_json(run_dir)["submissions"][0]
        assert len(sub["job_ids"]) == 1000 and sub["task_indices"] == list(range(1000))
        assert "1000 task(s) submitted as array" in proc.stdout
        queued = subprocess.run(["squeue", "-h", "-r", "-j", sub["array_job_id"], "-o", "%i"], capture_output=True,
                                text=True).stdout.split()
        assert len(queued) == 1000, "one array element per task, all queued, none capped by submitit's %256"
    finally:
        assert launcher("cancel", str(run_dir)).returncode == 0
    print(f"\nlauncher submit, 1000 tasks: {seconds:.2f}s")
    assert seconds < 5.0


def test_e2e_array_with_gpus_gather_and_run_json(scenarios: dict[str, Future[Outcome]]) -> None:
    e2e = outcome(scenarios, "e2e")
    run_dir = e2e.run_dir
    status = collect(run_dir)
    assert status.gather_state == "COMPLETED", diagnose(run_dir)
    assert [t.state for t in status.tasks] == ["DONE"] * 12
    assert re.search(r"12 task\(s\) submitted as array \d+; gather job \d+", e2e.notes["stdout"])

    run = run_json(run_dir)
    sub = run["submissions"][0]
    assert run["run_id"] == run_dir.name and run["launcher_version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}", run["git_sha"] or ""), run["git_sha"]
    assert run["image"]["runtime"] == "none" and run["image"]["python"]
    assert run["spec"]["slurm"]["partition"] == "debug" and run["spec"]["slurm"]["gpus_per_node"] == 2  # the profile
    assert len(sub["job_ids"]) == 12 and all(j.startswith(f"{sub['array_job_id']}_") for j in sub["job_ids"])
    assert sub["gather_job_id"] and sub["submitted_at"] and sub["task_indices"] == list(range(12))

    gpu_sets = set()
    for task in status.tasks:
        done = json.loads((task_dir(run_dir, task.task_id) / "done.json").read_text())
        layout = done["last_layout"]
        assert layout["data_parallel_size"] == 2 and layout["tensor_parallel_size"] == 1, layout
        assert len(layout["gpus"]) == 2 and set(layout["gpus"]) <= {"0", "1", "2", "3"}, layout
        gpu_sets.add(tuple(layout["gpus"]))
        replicas = last_attempt(run_dir, task.task_id)["replicas"]
        assert sorted(r["replica"] for r in replicas) == [0, 1] and all(r["records"] > 0 for r in replicas)
        assert all(r["slurm_job_id"] for r in replicas)
    e2e.notes["gpu_sets"] = sorted(gpu_sets)

    out = run_dir.parent.parent
    written = {}
    for ds in ("ds_a", "ds_b"):
        for ablation in ("context_only", "full"):
            group = out / ds / ablation
            rows = [json.loads(x) for x in (group / "samples.jsonl").read_text().splitlines()]
            assert [r["row"] for r in rows] == list(range(RECORDS))
            assert all(len(r["generated_samples"]) == 2 for r in rows)
            summary = json.loads((group / "inference_summary.json").read_text())
            assert summary["total_samples"] == 2 * RECORDS and summary["data_parallel_size"] == 2
            manifest = json.loads((group / "manifest.json").read_text())
            from launcher.outputs import sha256_file

            assert all(sha256_file(group / f) == m["sha256"] for f, m in manifest["files"].items())
            written.update({p: p.read_bytes() for p in group.rglob("*") if p.is_file()})
    # `launcher gather` by hand after the gather job: verifies again and rewrites the same bytes
    proc = launcher("gather", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert written == {p: p.read_bytes() for p in written}
    assert "DP=2" in proc.stdout
    assert launcher("status", str(run_dir)).returncode == 0


def test_crash_twice_then_success(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    crash = outcome(scenarios, "crash")
    run_dir, task = crash.run_dir, "ds_a.full.0001"
    assert crash.notes["wait_rc"] == 0, crash.notes["stdout"] + crash.notes["stderr"]
    failures = failure_records(run_dir, task)
    assert [f["failures"] for f in failures] == [1, 2] and all(f["retry"] for f in failures)
    assert all("InjectedFault" in f["error"] and f["kind"] == "exception" for f in failures)
    assert any("InjectedFault" in line for line in failures[0]["log_tail"]), "the record carries the log tail"
    assert live(run_dir, task)["restart"] == 2  # the same Slurm job, requeued twice
    assert last_attempt(run_dir, task)["replicas"][0]["records_todo"] == 1  # the third attempt resumed: 2 were done
    for other in ("ds_a.full.0000", "ds_a.full.0002"):  # the others went on
        assert not failure_records(run_dir, other) and live(run_dir, other)["restart"] == 0
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_sigkill_of_the_task_process(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    killed = outcome(scenarios, "sigkill")
    run_dir, task = killed.run_dir, "ds_a.full.0000"
    (failure,) = failure_records(run_dir, task)
    assert failure["kind"] == "died" and "SIGKILL" in failure["error"] and failure["retry"], failure
    assert live(run_dir, task)["restart"] == 1 and live(run_dir, task)["pid"] != killed.notes["killed_pid"]
    assert 2 <= killed.notes["chunks_at_kill"] < 5
    todo = last_attempt(run_dir, task)["replicas"][0]["records_todo"]
    assert todo <= 5 - killed.notes["chunks_at_kill"], "the requeued attempt resumed from the chunks"
    assert run_json(run_dir)["submissions"][0]["job_ids"][0].endswith("_0"), "an array element"
    assert not failure_records(run_dir, "ds_a.full.0001") and live(run_dir, "ds_a.full.0001")["restart"] == 0
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_preemption_by_high_partition(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    pre = outcome(scenarios, "preempt")
    run_dir, task = pre.run_dir, "ds_a.full.0000"
    job = run_json(run_dir)["submissions"][0]["job_ids"][0]
    (marker,) = requeue_markers(run_dir, task)
    assert marker["restart"] == 0 and "USR2" in marker["why"]
    log = (run_dir / "logs" / f"{job}_0_log.out").read_text()
    assert "this job is preempted" in log, log[-2000:]
    assert sacct_states(pre.notes["high_job"]) == ["COMPLETED"]
    assert sacct_states(job.split("_")[0])[0] in {"PREEMPTED", "REQUEUED"}
    assert not failure_records(run_dir, task), "a preemption is not a failure"
    assert live(run_dir, task)["restart"] == 1
    replicas = last_attempt(run_dir, task)["replicas"]
    assert sum(r["records_todo"] for r in replicas) <= RECORDS - pre.notes["chunks_at_preemption"]
    assert len(replicas) == 2, "DP=2 on the 2 fake GPUs, before and after the preemption"
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_timeout_needs_two_requeues(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    to = outcome(scenarios, "timeout")
    run_dir, task = to.run_dir, "ds_a.full.0000"
    markers = requeue_markers(run_dir, task)
    assert [m["restart"] for m in markers][:2] == [0, 1], markers
    assert live(run_dir, task)["restart"] >= 2 and not failure_records(run_dir, task)
    job = run_json(run_dir)["submissions"][0]["job_ids"][0]
    log = (run_dir / "logs" / f"{job}_0_log.out").read_text()
    assert log.count("this job is timed-out") >= 2, log[-2000:]
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_scancel_then_resubmit_resumes(scenarios: dict[str, Future[Outcome]], reference: bytes) -> None:
    res = outcome(scenarios, "resubmit")
    run_dir = res.run_dir
    refused = res.notes["refused"]
    assert refused.returncode == 2 and "still has" in refused.stderr and "launcher cancel" in refused.stderr
    first, second = run_json(run_dir)["submissions"]
    assert first["task_indices"] == [0, 1, 2] and 0 not in second["task_indices"]  # done tasks are skipped
    assert re.search(r"\d task\(s\) submitted, \d already done", res.notes["again"])
    assert 1 <= res.notes["cut"]["ds_a.full.0001"] < 3, f"task 1 was not cut mid-way: {res.notes['cut']}"
    assert 1 in second["task_indices"] and last_attempt(run_dir, "ds_a.full.0001")["replicas"][0]["records_todo"] < 3
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.glob("tasks/*/chunks/*.jsonl")}
    assert all(after[name] == data for name, data in res.notes["chunks_before"].items()), "kept chunks were rewritten"
    assert collect(run_dir).gather_state == "COMPLETED"
    assert_nothing_lost_or_twice(run_dir, reference)


def test_status_running_pending_failed(scenarios: dict[str, Future[Outcome]]) -> None:
    st = outcome(scenarios, "states")
    run_dir = st.run_dir
    running = st.notes["while_running"]
    assert running[0] == ("RUNNING", "") and all(s == ("PENDING", "JobArrayTaskLimit") for s in running[1:]), running
    assert "RUNNING" in st.notes["status_running"] and "JobArrayTaskLimit" in st.notes["status_running"]
    final: RunStatus = st.notes["final"]
    assert [t.state for t in final.tasks] == ["DONE", "DONE", "FAILED"]
    failed = final.tasks[2]
    assert failed.failures == 1 and "InjectedFault" in failed.last_error
    assert final.gather_state == "FAILED"  # gather refuses incomplete outputs, loudly
    cli = st.notes["status_cli"]
    assert cli.returncode == 1, "status exits 1 when a task has failed"
    data = json.loads(cli.stdout)
    assert data["counts"] == {"DONE": 2, "FAILED": 1} and data["gather"]["state"] == "FAILED"
    (record,) = failure_records(run_dir, failed.task_id)
    assert record["retry"] is False and record["max_retries"] == 0 and record["log_tail"]
    gather_err = (run_dir / "logs" / f"{final.gather_job_id}_0_log.err").read_text()
    assert "ds_a.full.0002" in gather_err and "fix:" in gather_err


def test_status_held_and_cancel(scenarios: dict[str, Future[Outcome]]) -> None:
    held = outcome(scenarios, "held")
    assert all(t.reason == "JobHeldUser" for t in held.notes["held"].tasks)
    assert held.notes["cancel"].returncode == 0 and "cancelled" in held.notes["cancel"].stdout
    assert held.notes["cancelled"].gather_state == "CANCELLED"
    assert "nothing to cancel" in held.notes["again"].stdout
