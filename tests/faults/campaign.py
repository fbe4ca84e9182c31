"""campaign.py: a seed -> trials (a fault kind and where it lands) -> each trial run against the live local Slurm ->
a JSON report: trials run and passed, faults by kind, records checked, lost, duplicated.

A trial submits a small multi-task array (the HF backend on the tiny demo model, its own output dir), injects ONE
real fault at a point that `random.Random(seed)` chose, waits for the run's gather job, and checks three things:
no record lost and none generated twice (in the tasks' chunk files, before gather's dedup), and the gathered
outputs byte-identical to an uninterrupted reference run of the same spec (computed once per campaign). It also
checks that the fault landed (the task was cut mid-way, a requeue or failure is on record): a fault that missed
proves nothing.

Faults: SIGKILL of the task's process; preemption by a job in the `high` partition; scancel then `launcher submit`
again; slurmd killed (SIGKILL) and restarted (the node's daemon fails); a 1-minute time limit; the output storage
read-only for a while (a bind mount remounted ro); the disk full (the output dir is a tmpfs, shrunk to what it holds,
then grown back). Only the timing is arranged, through launcher/faults.py (LAUNCHER_FAULT_SLOW_S: tasks sleep after
each record, so a fault lands mid-task).

    python -m tests.faults.campaign --trials 60 --seed 1 --report docs/faults-last-campaign.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from . import cluster

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "configs" / "slurm-local.yaml"
KINDS = ("sigkill", "preempt", "resubmit", "node", "timeout", "readonly", "diskfull")
TRIAL_TIMEOUT_S = 480.0
TMPFS_SIZE = 256 << 20  # the disk-full trial's output dir: ample until the fault shrinks it
# Compared byte for byte with the reference: everything gather writes except the two files that hold timings
# (inference_summary.json) or their hashes (manifest.json; its other entries are compared).
TIMED_FILES = {"inference_summary.json", "manifest.json"}

os.environ.setdefault("OMP_NUM_THREADS", "1")  # exported to the jobs: 8 tasks on 2 cores, one math thread each
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------- the workload

@dataclass(frozen=True)
class Workload:
    """What every trial runs: the same datasets, model and sampling, so all outputs must equal the reference's."""

    root: Path
    model: Path
    datasets: tuple[tuple[str, Path, int], ...]  # name, path, records
    per_shard: int

    @property
    def tasks(self) -> list[tuple[str, int]]:
        """(task id, records) in plan order: dataset x ablation (`full`) x shard."""
        out = []
        for name, _, n in self.datasets:
            for shard in range(-(-n // self.per_shard)):
                out.append((f"{name}.full.{shard:04d}", min(self.per_shard, n - shard * self.per_shard)))
        return out

    @property
    def records(self) -> int:
        return sum(n for _, _, n in self.datasets)


def make_workload(root: Path, model: Path | None = None, shape: Sequence[tuple[str, int]] = (("ds_a", 4), ("ds_b", 4)),
                  per_shard: int = 4) -> Workload:
    root.mkdir(parents=True, exist_ok=True)
    if model is None:
        from launcher.demo_model import make_demo_model

        model = root / "model"
        if not (model / "config.json").exists():
            make_demo_model(model)
    datasets = []
    for name, n in shape:
        path = root / "data" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"user_id": f"{name}-u{i:02d}", "profile": {"age": 20 + i, "likes": ["films", "music"][i % 2]},
                 "history": [f"review {i}.{j}: fine" for j in range(1 + i % 3)], "context": f"Write about item {i}."}
                for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        datasets.append((name, path, n))
    return Workload(root, model, tuple(datasets), per_shard)


def write_spec(wl: Workload, name: str, out_dir: Path, slurm: dict[str, Any] | None = None) -> Path:
    """A job spec on the local cluster's profile. Only slurm settings differ between trials: they never change the
    samples (they are not in the run's fingerprint), so every trial must reproduce the reference byte for byte."""
    spec = {
        "extends": str(PROFILE),
        "name": name,
        "model": {"path": str(wl.model)},
        "data": {"datasets": [{"name": n, "path": str(p)} for n, p, _ in wl.datasets], "ablation_configs": ["full"],
                 "num_samples": 2, "records_per_shard": wl.per_shard},
        "sampling": {"max_tokens": 8, "seed": 7},
        "slurm": {"gpus_per_node": 0, "mem": "512M", "time": 5, **(slurm or {})},
        "output": {"dir": str(out_dir), "chunk_records": 1},  # one chunk per record: resume loses nothing done
    }
    path = wl.root / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ---------------------------------------------------------------- the trials (seeded)

@dataclass(frozen=True)
class Trial:
    index: int
    kind: str
    seed: int  # this trial's own seed, drawn from the campaign's: Random(seed) chose `point`
    point: dict[str, Any]  # where and how the fault lands: target task, after how many records, for how long...

    @property
    def name(self) -> str:
        return f"f{self.index:03d}-{self.kind}"


def plan_trials(n: int, seed: int, wl: Workload, kinds: Sequence[str] = KINDS) -> list[Trial]:
    """Kinds cycle (each block of len(kinds) trials is a shuffled permutation, so any n >= len(kinds) has them all);
    each trial's injection point comes from its own seed."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < n:
        block = list(kinds)
        rng.shuffle(block)
        order += block
    trials = []
    for i, kind in enumerate(order[:n]):
        trial_seed = rng.getrandbits(32)
        trials.append(Trial(i, kind, trial_seed, draw_point(kind, random.Random(trial_seed), wl)))
    return trials


def draw_point(kind: str, rng: random.Random, wl: Workload) -> dict[str, Any]:
    task_id, rows = rng.choice(wl.tasks)
    # After 1..rows-1 records: the task has started writing and has more to do. 1.5-2.5 s per record (slowed) gives
    # the injector time to act before the task could finish. scancel and preemption need longer: submitit ignores
    # scancel's SIGTERM (the task was seen finishing its work 4.5 s after it), and Slurm holds back scheduling, the
    # preemptor's included, while any job on the node is completing (7 s seen). So 2 records or more are left then,
    # 3-4 s each.
    last, slow = (rows - 2, (3.0, 4.0)) if kind in ("resubmit", "preempt") else (rows - 1, (1.5, 2.5))
    point: dict[str, Any] = {"task": task_id, "after_records": rng.randint(1, max(1, last)),
                             "slow_s": round(rng.uniform(*slow), 2)}
    if kind == "node":
        # at_submit: slurmd is down when the array is launched; the launch fails after MessageTimeout (10 s), so
        # Slurm marks the job NODE_FAIL and requeues it. mid_run: it dies while the tasks run.
        point["when"] = rng.choice(["at_submit", "mid_run"])
        point["down_s"] = round(rng.uniform(11, 15) if point["when"] == "at_submit" else rng.uniform(3, 10), 1)
    elif kind == "timeout":
        # Slurm's 1-minute limit, enforced on a ~30 s cycle: USR2 25-85 s into the attempt. The first attempt is
        # slowed so that it cannot finish in time (every record sleeps slow_s); later ones run at full speed.
        point = {"task": task_id, "time_min": 1, "slow_s": round(rng.uniform(24, 32), 1)}
        point["records_by_limit"] = f"{int(25 // point['slow_s'])}..{int(85 // point['slow_s'])}"
    elif kind in ("readonly", "diskfull"):
        point["hold_s"] = round(rng.uniform(2, 20), 1)
        if kind == "diskfull":
            point["slack_pages"] = rng.randint(0, 2)
    return point


# ---------------------------------------------------------------- running one trial

@dataclass
class TrialResult:
    index: int
    kind: str
    seed: int
    point: dict[str, Any]
    landed: bool = False
    evidence: str = ""
    records: int = 0
    lost: int = 0
    duplicated: int = 0
    identical: bool = False
    seconds: float = 0.0
    started_s: float = 0.0  # after the campaign's start: with `seconds`, the campaign's timeline
    passed: bool = False
    error: str = ""


def launcher(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)


def submit(spec: Path, env: dict[str, str] | None = None) -> Path:
    proc = launcher("submit", str(spec), env=env)
    match = re.search(r"run dir: (\S+)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"launcher submit {spec} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return Path(match.group(1))


def run_json(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def chunk_rows(run_dir: Path, task_id: str = "*") -> list[tuple[str, int]]:
    """(dataset, row) of every record in every chunk file (of one task, or all): what was generated, twice if so."""
    out = []
    for path in sorted(run_dir.glob(f"tasks/{task_id}/chunks/chunk-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out.append((row["dataset"], row["row"]))
    return out


def is_done(run_dir: Path, task_id: str) -> bool:
    return (run_dir / "tasks" / task_id / "done.json").exists()


def gathered_files(out_dir: Path, wl: Workload) -> dict[str, bytes]:
    """The outputs gather wrote, minus timings: the bytes every run of this spec must produce."""
    files: dict[str, bytes] = {}
    for name, _, _ in wl.datasets:
        group = out_dir / name / "full"
        if not group.is_dir():
            continue
        for path in sorted(group.rglob("*")):
            if path.is_file() and path.name not in TIMED_FILES:
                files[path.relative_to(out_dir).as_posix()] = path.read_bytes()
        manifest = group / "manifest.json"
        if manifest.exists():  # its hashes of everything but the summary must match too
            entries = json.loads(manifest.read_text())["files"]
            entries.pop("inference_summary.json", None)
            files[f"{name}/full/manifest.json:files"] = json.dumps(entries, sort_keys=True).encode()
    return files


class Stopped(RuntimeError):
    pass


class TrialRun:
    """One trial: submit, inject at the chosen point, wait for the gather job, judge. Never raises: a trial that goes
    wrong is a failed trial with its error, and whatever it left in Slurm is cancelled."""

    def __init__(self, trial: Trial, wl: Workload, reference: dict[str, bytes], gate: cluster.SignalGate,
                 stop: threading.Event, campaign_t0: float) -> None:
        self.trial, self.wl, self.reference, self.gate, self.stop = trial, wl, reference, gate, stop
        self.campaign_t0 = campaign_t0
        self.out_dir = wl.root / "trials" / trial.name
        self.run_dir: Path | None = None
        self.notes: dict[str, Any] = {}

    # -- helpers

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float = TRIAL_TIMEOUT_S,
                 every_s: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stop.is_set():
                raise Stopped(f"campaign stopped while waiting for {what}")
            value = check()
            if value:
                return value
            time.sleep(every_s)
        raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")

    def spec(self, **slurm: Any) -> Path:
        return write_spec(self.wl, self.trial.name, self.out_dir, slurm)

    def slow_env(self, until_restart: int | None = None) -> dict[str, str]:
        slow = str(self.trial.point["slow_s"]) + (f":{until_restart}" if until_restart is not None else "")
        return {"LAUNCHER_FAULT_SLOW_S": slow}

    @property
    def task(self) -> str:
        return str(self.trial.point["task"])

    def submissions(self) -> list[dict[str, Any]]:
        assert self.run_dir is not None
        subs: list[dict[str, Any]] = run_json(self.run_dir)["submissions"]
        return subs

    def wait_records(self) -> None:
        """Until the target task has written `after_records` records (one chunk file each): it is then mid-way."""
        assert self.run_dir is not None
        run_dir, task, k = self.run_dir, self.task, self.trial.point["after_records"]
        self.wait_for(f"{k} record(s) of {task}", lambda: len(chunk_rows(run_dir, task)) >= k)
        self.notes["records_at_fault"] = len(chunk_rows(run_dir, task))
        self.notes["cut_mid_task"] = not is_done(run_dir, task)

    def wait_gathered(self) -> str:
        """Until the newest submission's gather job has ended (it starts once every task has ended: afterany)."""
        def ended() -> str | None:
            state = cluster.job_state(self.submissions()[-1]["gather_job_id"])
            return state if state in cluster.FINAL_JOB_STATES else None
        state: str = self.wait_for("the gather job", ended, every_s=1.0)
        return state

    def task_log(self) -> Path:
        """submitit's log of the target task's array element in the first submission."""
        assert self.run_dir is not None
        first = self.submissions()[0]
        index = [t for t, _ in self.wl.tasks].index(self.task)
        job_id = first["job_ids"][first["task_indices"].index(index)]
        return self.run_dir / "logs" / f"{job_id}_0_log.out"

    def requeue_markers(self) -> list[dict[str, Any]]:
        assert self.run_dir is not None
        folder = self.run_dir / "tasks" / self.task / "requeues"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

    # -- the trial

    def execute(self) -> TrialResult:
        t0 = time.monotonic()
        kind = self.trial.kind
        result = TrialResult(self.trial.index, kind, self.trial.seed, self.trial.point, records=self.wl.records,
                             started_s=round(t0 - self.campaign_t0, 1))
        try:
            # the disk-full trial's output dir is a tmpfs from the start (a mount would hide what is under it)
            storage = cluster.tmpfs(self.out_dir, TMPFS_SIZE) if kind == "diskfull" else contextlib.nullcontext()
            with storage, (self.gate.gpus if kind == "preempt" else contextlib.nullcontext()):
                try:
                    getattr(self, f"inject_{kind}")()
                    self.notes["gather_state"] = self.wait_gathered()
                    if kind in ("readonly", "diskfull") and self.notes["gather_state"] != "COMPLETED":
                        self.resubmit_unstarted()
                    result = self.check(result)
                except Exception as exc:  # the trial failed: say why, count what is on disk, keep what it left
                    result.error = f"{type(exc).__name__}: {exc}"
                    if self.run_dir is not None:
                        with contextlib.suppress(Exception):
                            result = self.check(result)
                finally:
                    if not result.passed:
                        self.keep_evidence()
        except Exception as exc:  # the mount itself failed
            result.error = result.error or f"{type(exc).__name__}: {exc}"
        finally:
            if not result.passed and self.run_dir is not None:
                launcher("cancel", str(self.run_dir))
        result.seconds = round(time.monotonic() - t0, 1)
        return result

    def resubmit_unstarted(self) -> None:
        """A task that Slurm starts while the storage is read-only fails before any launcher code runs: slurmstepd
        cannot open its log there ("Could not open stdout file"), and Slurm ends the job FAILED, never requeued. No
        job can recover from that itself; the user does what gather's error says, `launcher submit` the same spec
        again, and nothing is lost. Do that here, only for exactly that case: every unfinished task has no log."""
        assert self.run_dir is not None
        unfinished = [i for i, (t, _) in enumerate(self.wl.tasks) if not is_done(self.run_dir, t)]
        last_job = {i: j for sub in self.submissions() for i, j in zip(sub["task_indices"], sub["job_ids"],
                                                                         strict=True)}
        if not unfinished or any((self.run_dir / "logs" / f"{last_job[i]}_0_log.out").exists() for i in unfinished):
            return
        self.notes["resubmitted"] = [self.wl.tasks[i][0] for i in unfinished]
        submit(self.spec())
        self.notes["gather_state"] = self.wait_gathered()

    def inject_sigkill(self) -> None:
        self.run_dir = submit(self.spec(), self.slow_env())
        self.wait_records()
        run_dir, task, array = self.run_dir, self.task, self.submissions()[-1]["array_job_id"]

        def task_pid() -> int | None:
            # live.json names the current attempt's process: make sure it is that task's, in this run's array
            live = run_dir / "tasks" / task / "live.json"
            pid = int(json.loads(live.read_text())["pid"]) if live.exists() else 0
            return pid if pid and cluster.environ_of(pid).get("SLURM_ARRAY_JOB_ID") == array else None
        pid: int = self.wait_for(f"the process of {task}", task_pid)
        os.kill(pid, signal.SIGKILL)
        self.notes["killed_pid"] = pid

    def inject_preempt(self) -> None:
        # The window opens before the submit: waiting for it later, the tasks could finish before the fault.
        with self.gate.signal_window(self.stop):
            # time > 50 min: below that submitit counts a preemption's USR2 as a time-out
            self.run_dir = submit(self.spec(gpus_per_node=1, time=60), self.slow_env())
            self.wait_records()
            # all 4 GPUs: every debug job holding one (this trial's tasks; preemption trials run one at a time)
            high = cluster.run(["sbatch", "--parsable", "-p", "high", "--gres=gpu:4", "-c", "1", "--mem=64M",
                                "-J", f"{self.trial.name}-high", "-o", "/dev/null", "--wrap", "true"])
            if high.returncode != 0:
                raise RuntimeError(f"sbatch of the preempting job failed: {high.stderr}")
            self.notes["high_job"] = high_job = high.stdout.strip().split(";")[0]
            # the preemptor runs once the preempted tasks have handled their USR2 and left the GPUs
            self.wait_for("the preempting job", lambda: cluster.job_state(high_job) in cluster.FINAL_JOB_STATES,
                          every_s=0.5)

    def inject_resubmit(self) -> None:
        spec = self.spec()
        with self.gate.signal_window(self.stop):  # scancel's SIGTERM and SIGKILL go through slurmd too
            self.run_dir = submit(spec, self.slow_env())
            self.wait_records()
            array = self.submissions()[-1]["array_job_id"]
            subprocess.run(["scancel", array], check=True, timeout=30)
            self.wait_for("the cancelled array to leave Slurm", lambda: not cluster.in_queue(array), every_s=0.5)
        submit(spec)  # as a user would: the same spec again (at full speed); done tasks are skipped

    def inject_node(self) -> None:
        point = self.trial.point
        spec = self.spec()
        # The gate is taken before the submit: waiting for it later, the tasks could finish before the fault.
        with self.gate.outage(self.stop):
            if point["when"] == "at_submit":
                with cluster.slurmd_down() as pid:
                    self.run_dir = submit(spec, self.slow_env())
                    time.sleep(point["down_s"])
                self.notes["cut_mid_task"] = True
            else:
                self.run_dir = submit(spec, self.slow_env())
                self.wait_records()
                with cluster.slurmd_down() as pid:
                    time.sleep(point["down_s"])
            # still holding the gate: the next node trial may kill this slurmd as soon as it is released
            self.notes.update(slurmd_killed=pid, slurmd_now=cluster.slurmd_pid())

    def inject_timeout(self) -> None:
        # signal_delay 5 s (the minimum): USR2 as late as Slurm's 30 s check cycle allows
        spec = self.spec(time=self.trial.point["time_min"], signal_delay_s=5, max_requeues=4)
        with self.gate.signal_window(self.stop):  # every task is slowed: each waits for its USR2
            self.run_dir = submit(spec, self.slow_env(until_restart=1))
            run_dir, tasks = self.run_dir, [t for t, _ in self.wl.tasks]
            self.wait_for("every task timed out and requeued", lambda: all(
                is_done(run_dir, t) or list((run_dir / "tasks" / t / "requeues").glob("*.json")) for t in tasks),
                every_s=1.0)
        self.notes["cut_mid_task"] = True  # checked in landed(): the marker plus sacct's TIMEOUT

    def inject_readonly(self) -> None:
        self.run_dir = submit(self.spec(), self.slow_env())
        self.wait_records()
        with cluster.read_only(self.out_dir):
            time.sleep(self.trial.point["hold_s"])

    def inject_diskfull(self) -> None:
        self.run_dir = submit(self.spec(), self.slow_env())
        self.wait_records()
        with cluster.disk_full(self.out_dir, self.trial.point["slack_pages"], TMPFS_SIZE) as size:
            self.notes["shrunk_to_bytes"] = size
            time.sleep(self.trial.point["hold_s"])

    # -- the verdict

    def check(self, result: TrialResult) -> TrialResult:
        assert self.run_dir is not None
        rows = Counter(chunk_rows(self.run_dir))
        expected = {(name, row) for name, _, n in self.wl.datasets for row in range(n)}
        result.lost = len(expected - rows.keys())
        result.duplicated = sum(n - 1 for n in rows.values())
        if rows.keys() - expected:
            result.error = f"rows nobody asked for: {sorted(rows.keys() - expected)[:5]}"
        result.identical = gathered_files(self.out_dir, self.wl) == self.reference
        try:
            result.landed, result.evidence = self.landed()
        except (OSError, KeyError, ValueError) as exc:
            result.landed, result.evidence = False, f"could not tell: {type(exc).__name__}: {exc}"
        if self.notes.get("gather_state") != "COMPLETED":
            result.error = result.error or f"gather job {self.notes.get('gather_state')}"
        result.passed = (result.lost == 0 and result.duplicated == 0 and result.identical and result.landed
                         and not result.error)
        return result

    def landed(self) -> tuple[bool, str]:
        """Did the fault hit the run mid-way? Evidence from the run's own records and from Slurm."""
        assert self.run_dir is not None
        kind, notes = self.trial.kind, self.notes
        states = cluster.sacct_states(self.submissions()[0]["array_job_id"])
        cut = bool(notes.get("cut_mid_task"))
        if kind == "sigkill":
            from launcher.retries import read_failures

            died = [f for f in read_failures(self.run_dir / "tasks" / self.task)
                    if f.get("kind") == "died" and "SIGKILL" in f.get("error", "")]
            return bool(died) and cut, f"{len(died)} SIGKILL failure record(s); requeued by the teardown"
        if kind in ("preempt", "timeout"):
            # submitit's words for the USR2 it caught, in the task's own log; and the checkpoint's requeue marker
            said = "this job is preempted" if kind == "preempt" else "this job is timed-out"
            caught = self.task_log().read_text(errors="replace").count(said)
            markers = self.requeue_markers()
            return (bool(markers) and caught > 0 and cut,
                    f"{len(markers)} requeue marker(s), {caught} x '{said}'; sacct: {states}")
        if kind == "resubmit":
            subs = self.submissions()
            ids = [t for t, _ in self.wl.tasks]
            again = [ids[i] for i in subs[-1]["task_indices"]] if len(subs) > 1 else []
            return len(subs) == 2 and cut and self.task in again, f"resubmitted {again}"
        if kind == "node":
            back = notes["slurmd_now"] not in (None, notes["slurmd_killed"])
            return back and cut, f"slurmd {notes['slurmd_killed']} -> {notes['slurmd_now']}; sacct: {states}"
        # readonly, diskfull: the storage went bad while the task still had records to write
        user = f"; resubmitted {notes['resubmitted']}, which Slurm could not start" if "resubmitted" in notes else ""
        return cut, (f"{notes['records_at_fault']} record(s) of {self.task} written before the fault; "
                     f"sacct: {states}{user}")

    def keep_evidence(self) -> None:
        """A failed trial's run dir (logs, chunks, markers) is copied out of the way: a tmpfs goes with its trial."""
        if self.run_dir is None or not self.run_dir.exists():
            return
        keep = self.wl.root / "kept" / self.trial.name
        shutil.copytree(self.run_dir, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pkl"))
        self.notes["kept"] = str(keep)


# ---------------------------------------------------------------- the campaign

def run_reference(wl: Workload) -> tuple[dict[str, bytes], float]:
    """The same spec, uninterrupted: what every trial must reproduce byte for byte."""
    t0 = time.monotonic()
    out = wl.root / "reference"
    run_dir = submit(write_spec(wl, "reference", out))
    gather_id = run_json(run_dir)["submissions"][-1]["gather_job_id"]
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while (state := cluster.job_state(gather_id)) not in cluster.FINAL_JOB_STATES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the reference run {run_dir} did not finish in {TRIAL_TIMEOUT_S:.0f}s")
        time.sleep(1.0)
    rows = chunk_rows(run_dir)
    if state != "COMPLETED" or len(rows) != wl.records or len(set(rows)) != wl.records:
        raise RuntimeError(f"the reference run failed (gather job {state}, {len(rows)} rows): see {run_dir}/logs")
    return gathered_files(out, wl), round(time.monotonic() - t0, 1)


def schedule(trials: Sequence[Trial]) -> list[Trial]:
    """Start order; only wall time depends on it. The time limits first (the longest trials), then the rest with the
    node failures and the preemptions (one at a time) spread among them: an outage waits for the time limits' USR2s
    (SignalGate), and the other kinds keep the machine busy meanwhile."""
    def spread(base: list[Trial], extra: list[Trial]) -> list[Trial]:
        out, step = list(base), max(1, len(base) // (len(extra) + 1))
        for i, t in enumerate(extra):
            out.insert(min(len(out), (i + 1) * step + i), t)
        return out
    of = {k: [t for t in trials if t.kind == k] for k in KINDS}
    alternating = [t for pair in zip(of["node"], of["preempt"], strict=False) for t in pair]
    n = min(len(of["node"]), len(of["preempt"]))
    special = alternating + of["node"][n:] + of["preempt"][n:]
    others = [t for t in trials if t.kind not in ("timeout", "node", "preempt")]
    return of["timeout"] + spread(others, special)


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the fault campaign needs root: it mounts file systems and restarts slurmd")
    if cluster.run(["scontrol", "ping"]).returncode != 0 or cluster.slurmd_pid() is None:
        raise SystemExit("no live local Slurm: run `make slurm-up` (bash slurm/up.sh)")


def run_campaign(trials: Sequence[Trial], wl: Workload, workers: int = 8,
                 on_result: Callable[[TrialResult], None] | None = None) -> dict[str, Any]:
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


def report(results: Sequence[TrialResult], wl: Workload, reference_s: float, wall_s: float,
           workers: int) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        k = by_kind.setdefault(r.kind, {"trials": 0, "passed": 0, "records": 0, "lost": 0, "duplicated": 0})
        k["trials"] += 1
        k["passed"] += r.passed
        k["records"] += r.records
        k["lost"] += r.lost
        k["duplicated"] += r.duplicated
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    slurm = cluster.run(["sinfo", "--version"]).stdout.strip()
    return {
        "summary": {
            "trials_run": len(results), "trials_passed": sum(r.passed for r in results),
            "faults_by_kind": dict(sorted(by_kind.items())),
            "records_checked": sum(r.records for r in results), "records_lost": sum(r.lost for r in results),
            "records_duplicated": sum(r.duplicated for r in results),
            "outputs_identical": sum(r.identical for r in results), "faults_landed": sum(r.landed for r in results),
            "wall_seconds": wall_s, "reference_seconds": reference_s,
        },
        "setup": {"workers": workers, "tasks_per_trial": len(wl.tasks), "records_per_trial": wl.records,
                  "datasets": [{"name": n, "records": k} for n, _, k in wl.datasets], "records_per_shard": wl.per_shard,
                  "cpus": os.cpu_count(), "platform": platform.platform(), "slurm": slurm, "git_sha": sha},
        "trials": [asdict(r) for r in results],
    }


def describe(r: TrialResult) -> str:
    verdict = "PASS" if r.passed else "FAIL"
    point = " ".join(f"{k}={v}" for k, v in r.point.items())
    line = (f"{r.index:3d} {r.kind:<9} {verdict}  {r.seconds:6.1f}s  records {r.records} lost {r.lost} "
            f"dup {r.duplicated} identical {'yes' if r.identical else 'NO'}  seed {r.seed}  {point}")
    if not r.passed:
        line += f"\n      landed: {r.landed} ({r.evidence}); error: {r.error}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=21, help="how many trials (kinds cycle: 7 or more has all)")
    parser.add_argument("--seed", type=int, default=1, help="the campaign's seed: same seed, same trials")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--workers", type=int, default=8, help="trials at once (each has its own output dir)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list, of: {','.join(KINDS)}")
    parser.add_argument("--work", type=Path, help="work dir (model, data, trial outputs); default: a new temp dir")
    parser.add_argument("--model", type=Path, help="a model dir (default: a tiny demo model made in the work dir)")
    parser.add_argument("--only", help="comma list of trial indices: replay those trials of this seed's campaign")
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
    print(f"fault campaign: {len(trials)} trials, seed {args.seed}, {args.workers} at once; work dir {work}",
          flush=True)
    result = run_campaign(trials, wl, args.workers, on_result=lambda r: print(describe(r), flush=True))
    summary = result["summary"]
    print(json.dumps(summary, indent=1))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({"seed": args.seed, "trials_asked": args.trials, **result}, indent=1) + "\n")
    ok = summary["trials_passed"] == summary["trials_run"]
    if ok and args.work is None:
        shutil.rmtree(work, ignore_errors=True)  # kept when a trial failed: its logs are under <work>/kept/
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
