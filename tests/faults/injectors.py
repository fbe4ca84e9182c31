"""injectors.py: one trial against the live local Slurm -- submit, inject ONE real fault at the point its seed chose,
wait for the run's gather job -- and the injector of every fault kind.

Only the timing is arranged, through launcher/faults.py (LAUNCHER_FAULT_SLOW_S: workers sleep after each record, so
a fault lands mid-unit). The fault itself is real: a signal to the process that holds the unit (read from the unit's
claim, and checked against /proc), Slurm's own preemption, scancel, time limit and node daemon, a real read-only or
full file system, a real touch of the input, a real flipped bit in a stored chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..helpers import (
    FINAL_JOB_STATES,
    chunk_files,
    chunk_rows,
    claim_owner,
    in_queue,
    job_failures,
    job_log,
    job_state,
    launcher,
    requeue_markers,
    submissions,
    submit,
    unit_done,
    unit_failures,
    wait_for,
)
from . import cluster
from .checks import TrialResult, judge
from .hostile import inject_hostile
from .trials import Trial, Workload, write_spec

TRIAL_TIMEOUT_S = 480.0
TMPFS_SIZE = 256 << 20  # the disk-full trial's output dir: ample until the fault shrinks it


class TrialRun:
    """One trial: submit, inject at the chosen point, wait for the gather job, judge. Never raises: a trial that goes
    wrong is a failed trial with its error, and whatever it left in Slurm is cancelled."""

    def __init__(
        self,
        trial: Trial,
        wl: Workload,
        reference: dict[str, bytes],
        gate: cluster.SignalGate,
        stop: threading.Event,
        campaign_t0: float,
    ) -> None:
        self.trial, self.wl, self.reference, self.gate, self.stop = trial, wl, reference, gate, stop
        self.campaign_t0 = campaign_t0
        self.out_dir = wl.root / "trials" / trial.name
        self.run_dir: Path | None = None
        self.notes: dict[str, Any] = {}

    # -- helpers

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout_s: float = TRIAL_TIMEOUT_S, every_s: float = 0.2
    ) -> Any:
        return wait_for(what, check, timeout_s, every_s, stop=self.stop)

    def spec(self, wl: Workload | None = None, model: dict[str, Any] | None = None, **slurm: Any) -> Path:
        return write_spec(wl or self.wl, self.trial.name, self.out_dir, slurm, model)

    def slow_env(self, until_restart: int | None = None) -> dict[str, str]:
        slow = str(self.trial.point["slow_s"]) + (f":{until_restart}" if until_restart is not None else "")
        return {"LAUNCHER_FAULT_SLOW_S": slow}

    def submit(self, spec: Path, env: dict[str, str] | None = None) -> Path:
        run_dir, proc = submit(spec, env=env)
        said = [line for line in proc.stdout.splitlines() if "unit(s) to do" in line]
        self.notes.setdefault("submit_said", []).append(said[0] if said else proc.stdout[-300:])
        return run_dir

    @property
    def unit(self) -> str:
        return str(self.trial.point["unit"])

    @property
    def rd(self) -> Path:
        assert self.run_dir is not None, "nothing submitted yet"
        return self.run_dir

    def submissions(self) -> list[dict[str, Any]]:
        return submissions(self.rd)

    def wait_records(self) -> None:
        """Until the target unit has `after_records` records (one chunk file each): it is then mid-way."""
        k = self.trial.point["after_records"]
        self.wait_for(f"{k} record(s) of {self.unit}", lambda: len(chunk_rows(self.rd, self.unit)) >= k)
        self.notes["records_at_fault"] = len(chunk_rows(self.rd, self.unit))
        self.notes["cut_mid_unit"] = not unit_done(self.rd, self.unit)
        self.notes["holder"] = claim_owner(self.rd, self.unit)

    def holder_process(self, worker_child: bool) -> dict[str, Any]:
        """The claim's owner of the target unit, once /proc shows it is a live process of this run's array: the worker
        job's own process (DP=1: its one worker runs in it), or a worker process of its own (DP>1)."""
        array = self.submissions()[-1]["array_job_id"]  # submitit submits one job (no array) for one element

        def find() -> dict[str, Any] | None:
            owner = claim_owner(self.rd, self.unit)
            pid = int(owner.get("pid") or 0)
            env = cluster.environ_of(pid) if pid else {}
            if env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID")) != array:
                return None
            return owner if cluster.is_worker_process(pid) == worker_child else None

        owner: dict[str, Any] = self.wait_for(f"the process that holds {self.unit}", find)
        return owner

    def wait_gathered(self) -> str:
        """Until the newest submission's gather job has ended (it starts once every worker job has ended)."""

        def ended() -> str | None:
            state = job_state(self.submissions()[-1]["gather_job_id"])
            return state if state in FINAL_JOB_STATES else None

        state: str = self.wait_for("the gather job", ended, every_s=1.0)
        return state

    # -- the trial

    def execute(self) -> TrialResult:
        t0 = time.monotonic()
        kind = self.trial.kind
        result = TrialResult(
            self.trial.index,
            kind,
            self.trial.seed,
            self.trial.point,
            records=self.wl.records,
            started_s=round(t0 - self.campaign_t0, 1),
        )
        try:
            # the disk-full trial's output dir is a tmpfs from the start (a mount would hide what is under it)
            storage = cluster.tmpfs(self.out_dir, TMPFS_SIZE) if kind == "diskfull" else contextlib.nullcontext()
            # a worker-kill trial holds 2 fake GPUs until its jobs end: a preemption trial must not take them meanwhile
            with storage, self.gate.gpus if kind == "workerkill" else contextlib.nullcontext():
                try:
                    INJECTORS[kind](self)
                    self.notes["gather_state"] = self.wait_gathered()
                    if kind in ("readonly", "diskfull") and self.notes["gather_state"] != "COMPLETED":
                        self.resubmit_unstarted()
                    result = judge(self, result)
                except Exception as exc:  # the trial failed: say why, count what is on disk, keep what it left
                    result.error = f"{type(exc).__name__}: {exc}"
                    if self.run_dir is not None:
                        with contextlib.suppress(Exception):
                            result = judge(self, result)
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
        """A job that Slurm starts while the storage is read-only (or full) fails before any launcher code runs:
        slurmstepd cannot open its log there ("Could not open stdout file"), and Slurm ends it FAILED, never
        requeued. No job can recover from that itself; the user does what gather's error says, `launcher submit` the
        same spec again, and nothing is lost. Do that here, only for exactly that case: nothing failed (no failure
        record of a job or a unit), and either units are left and a worker job of the last submission never started
        (no log), or every unit is done and the gather job never started. The second happens when the workers finish
        inside the read-only window: they write through the run folder they hold open (store/kept.py), opened
        before the fault's read-only bind mount and so on the writable mount under it, while the gather job, started
        then, finds its log folder read-only."""
        unfinished = [u for u, _ in self.wl.units if not unit_done(self.rd, u)]
        last = self.submissions()[-1]
        never_started = [j for j in last["job_ids"] if not job_log(self.rd, j).exists()]
        gather_never_started = not job_log(self.rd, str(last["gather_job_id"])).exists()
        failed = [f for i in range(len(last["job_ids"])) for f in job_failures(self.rd, i)]
        failed += [f for u, _ in self.wl.units for f in unit_failures(self.rd, u)]
        if failed or not ((unfinished and never_started) or (not unfinished and gather_never_started)):
            return
        self.notes["resubmitted"] = {
            "units": unfinished,
            "jobs_never_started": never_started if unfinished else [str(last["gather_job_id"])],
        }
        self.submit(self.spec())
        self.notes["gather_state"] = self.wait_gathered()

    def keep_evidence(self) -> None:
        """A failed trial's run dir (logs, chunks, claims, markers) is copied out of the way: a tmpfs goes with its
        trial."""
        if self.run_dir is None or not self.run_dir.exists():
            return
        keep = self.wl.root / "kept" / self.trial.name
        shutil.copytree(self.run_dir, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pkl"))
        self.notes["kept"] = str(keep)


# ---------------------------------------------------------------- the injectors, one per kind


def inject_sigkill(run: TrialRun) -> None:
    """SIGKILL of the worker job's process (DP=1: the worker runs in it) while it holds the unit. srun's status
    reaches the batch script's teardown, which records the failure and requeues the job."""
    run.run_dir = run.submit(run.spec(), run.slow_env())
    run.wait_records()
    owner = run.holder_process(worker_child=False)
    run.notes["cut_mid_unit"] = run.notes["cut_mid_unit"] and not unit_done(run.rd, run.unit)
    os.kill(int(owner["pid"]), signal.SIGKILL)
    run.notes["killed"] = owner


def inject_workerkill(run: TrialRun) -> None:
    """kill -9 of one worker process of a DP=2 job (2 fake GPUs: two workers, each a process of its own) while it
    holds the unit with some of its chunks written. The job's other worker takes the unit over once its own is done
    (a dead owner on this host is dead at once), or the requeued job does. hf_batch_size 1 (it never changes the
    samples): a worker claims its next unit only when its engine asks for a request, so the tiny model's engine,
    ready in a second, does not take both units before the other worker has claimed one."""
    spec = run.spec(model={"hf_batch_size": 1}, gpus_per_node=2, jobs=1, mem="1G")
    run.run_dir = run.submit(spec, run.slow_env())
    run.wait_records()
    owner = run.holder_process(worker_child=True)
    run.notes["cut_mid_unit"] = run.notes["cut_mid_unit"] and not unit_done(run.rd, run.unit)
    run.notes["chunks_at_kill"] = len(chunk_files(run.rd, run.unit))
    os.kill(int(owner["pid"]), signal.SIGKILL)
    run.notes["killed"] = owner


def inject_preempt(run: TrialRun) -> None:
    # The window opens before the submit: waiting for it later, the workers could finish before the fault. The GPUs
    # are taken until the preemptor has run: it preempts every debug job holding one (no other GPU trial then).
    with run.gate.signal_window(run.stop), run.gate.gpus:
        # time > 50 min: below that submitit counts a preemption's USR2 as a time-out
        run.run_dir = run.submit(run.spec(gpus_per_node=1, time=60), run.slow_env())
        run.wait_records()
        # all 4 GPUs: every debug job holding one (this trial's jobs)
        high = cluster.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "high",
                "--gres=gpu:4",
                "-c",
                "1",
                "--mem=64M",
                "-J",
                f"{run.trial.name}-high",
                "-o",
                "/dev/null",
                "--wrap",
                "true",
            ]
        )
        if high.returncode != 0:
            raise RuntimeError(f"sbatch of the preempting job failed: {high.stderr}")
        run.notes["high_job"] = high_job = high.stdout.strip().split(";")[0]
        # the preemptor runs once the preempted jobs have handled their USR2 and left the GPUs
        run.wait_for("the preempting job", lambda: job_state(high_job) in FINAL_JOB_STATES, every_s=0.5)


def inject_resubmit(run: TrialRun) -> None:
    spec = run.spec()
    with run.gate.signal_window(run.stop):  # scancel's SIGTERM and SIGKILL go through slurmd too
        run.run_dir = run.submit(spec, run.slow_env())
        run.wait_records()
        array = run.submissions()[-1]["array_job_id"]
        subprocess.run(["scancel", array], check=True, timeout=30)
        run.wait_for("the cancelled array to leave Slurm", lambda: not in_queue(array), every_s=0.5)
    run.notes["resubmitted_at"] = time.time()
    run.submit(spec)  # as a user would: the same spec again (at full speed); done units are skipped


def inject_node(run: TrialRun) -> None:
    point = run.trial.point
    spec = run.spec()
    # The gate is taken before the submit: waiting for it later, the workers could finish before the fault.
    with run.gate.outage(run.stop):
        if point["when"] == "at_submit":
            with cluster.slurmd_down() as pid:
                run.run_dir = run.submit(spec, run.slow_env())
                time.sleep(point["down_s"])
            run.notes["cut_mid_unit"] = True
        else:
            run.run_dir = run.submit(spec, run.slow_env())
            run.wait_records()
            with cluster.slurmd_down() as pid:
                time.sleep(point["down_s"])
        # still holding the gate: the next node trial may kill this slurmd as soon as it is released
        run.notes.update(slurmd_killed=pid, slurmd_now=cluster.slurmd_pid())


def inject_timeout(run: TrialRun) -> None:
    # signal_delay 5 s (the minimum): USR2 as late as Slurm's 30 s check cycle allows
    spec = run.spec(time=run.trial.point["time_min"], signal_delay_s=5, max_requeues=4)
    with run.gate.signal_window(run.stop):  # every job is slowed: each waits for its USR2
        run.run_dir = run.submit(spec, run.slow_env(until_restart=1))
        jobs = len(run.submissions()[-1]["job_ids"])
        run.wait_for(
            "every worker job timed out and requeued (or every unit done)",
            lambda: (
                all(requeue_markers(run.rd, j) for j in range(jobs))
                or all(unit_done(run.rd, u) for u, _ in run.wl.units)
            ),
            every_s=1.0,
        )
    run.notes["cut_mid_unit"] = True  # checked in landed(): the marker, the log, the unit claimed again


def inject_readonly(run: TrialRun) -> None:
    run.run_dir = run.submit(run.spec(), run.slow_env())
    run.wait_records()
    with cluster.read_only(run.out_dir):
        time.sleep(run.trial.point["hold_s"])


def inject_diskfull(run: TrialRun) -> None:
    run.run_dir = run.submit(run.spec(), run.slow_env())
    run.wait_records()
    with cluster.disk_full(run.out_dir, run.trial.point["slack_pages"], TMPFS_SIZE) as size:
        run.notes["shrunk_to_bytes"] = size
        time.sleep(run.trial.point["hold_s"])


def inject_touch(run: TrialRun) -> None:
    """The unit's dataset file is touched while the workers run: a new mtime, the same bytes. A run is what its
    inputs hold, not their dates: the jobs, their requeues and the gather job stay in the run dir they were submitted
    with, and a submit of the same spec afterwards goes to that same run with nothing to do (not to a new run, and
    not refused as changed inputs)."""
    from launcher.spec import load_spec

    wl = run.wl.with_data_copy(run.wl.root / "touched" / run.trial.name)  # the other trials' inputs stay put
    spec = run.spec(wl)
    run.run_dir = run.submit(spec, run.slow_env())
    run.wait_records()
    path = wl.dataset_of(run.unit)
    before = path.stat().st_mtime_ns
    now = max(time.time_ns(), before + 1_000_000_000)  # a date of its own, however coarse the file system's clock
    os.utime(path, ns=(now, now))
    run.notes.update(touched=str(path), mtime_ns=[before, path.stat().st_mtime_ns], run_id_now=load_spec(spec).run_id)
    first = run.wait_gathered()
    if first != "COMPLETED":
        raise RuntimeError(f"the touched run did not complete: gather job {first}")
    run.notes["again_dir"] = str(run.submit(spec))  # as a user would, after touching the file


def inject_corrupt(run: TrialRun) -> None:
    """After a clean run: one bit of one stored chunk flipped. `launcher gather` must fail naming that file, and
    `launcher submit` of the same spec must regenerate exactly its records (same seeds: the same bytes)."""
    point = run.trial.point
    spec = run.spec()
    run.run_dir = run.submit(spec)
    first = run.wait_gathered()
    if first != "COMPLETED":
        raise RuntimeError(f"the clean run before the corruption failed: gather job {first}")
    chunks = chunk_files(run.rd, run.unit)
    path = chunks[point["chunk"] % len(chunks)]
    data = bytearray(path.read_bytes())
    run.notes.update(flipped=path.name, rows_in_chunk=data.count(b"\n"))
    offset = min(len(data) - 1, int(point["byte"] * len(data)))
    data[offset] ^= 1 << point["bit"]
    path.write_bytes(bytes(data))
    gathered = launcher("gather", str(run.rd))
    said = gathered.stdout + gathered.stderr
    # named: the whole path, verbatim (one line: a path broken at the terminal's width cannot be copied)
    run.notes.update(
        offset=offset,
        gather_rc=gathered.returncode,
        gather_said=said[-1500:],
        gather_named_file=str(path) in said and "fails its checksum" in said,
    )
    # the gathered outputs of that dataset go too: the resubmission's gather must write them again, byte for byte
    shutil.rmtree(run.out_dir / run.unit.split(".")[0] / "full", ignore_errors=True)
    run.notes["resubmitted_at"] = time.time()
    run.submit(spec)


def inject_changed(run: TrialRun) -> None:
    """One worker job runs the units in plan order. While it is mid-way through the first, the second dataset is
    rewritten: other bytes, the same size, its old mtime put back (only the ctime, which nobody can set, tells). The
    worker must refuse that unit (a failure naming the file and the fix), the run end incomplete with nothing
    generated from the changed bytes; the original put back and the spec submitted again, as the refusal says, must
    finish the same run, byte-identical to the reference."""
    wl = run.wl.with_data_copy(run.wl.root / "changed" / run.trial.name)
    # one request at a time: the worker claims (and reads) the second unit only once the first one's last record runs
    spec = run.spec(wl, {"hf_batch_size": 1}, jobs=1)
    run.run_dir = run.submit(spec, run.slow_env())
    run.wait_records()
    second = next(u for u, _ in wl.units if u != run.unit)
    path = wl.dataset_of(second)
    original, st = path.read_bytes(), path.stat()
    changed = bytearray(original)
    at = changed.index(b"Write about item ") + len("Write about item ")
    changed[at] = ord("9") if changed[at] != ord("9") else ord("8")  # one digit: the same size
    path.write_bytes(bytes(changed))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    run.notes.update(changed=str(path), changed_unit=second, same_size_mtime=path.stat().st_size == st.st_size)
    run.notes["first_gather"] = run.wait_gathered()
    run.notes["refusals"] = [f.get("error", "") for f in unit_failures(run.rd, second)]
    run.notes["rows_of_changed_unit"] = len(chunk_rows(run.rd, second))
    path.write_bytes(original)  # put back, as the refusal says; a new mtime and ctime, the recorded bytes
    run.notes["resubmitted_at"] = time.time()
    run.submit(spec)


def inject_clock(run: TrialRun) -> None:
    """Mid-unit, the unit is taken over by a worker on a node whose clock runs a year ahead, and that node dies: its
    claim (the next generation, as try_claim writes it) is stamped a year in the future. The holder sees it lost the
    unit and stops; nobody may take the unit for a year by that stamp. The workers must count the lease from when
    they first saw the stamp (claim_clock.py), so the spec submitted again after the lease finishes the unit."""
    point = run.trial.point
    env = {"LAUNCHER_CLAIM_LEASE_S": str(point["lease_s"])}
    spec = run.spec()
    run.run_dir = run.submit(spec, {**run.slow_env(), **env})
    run.wait_records()
    holder = claim_owner(run.rd, run.unit)
    folder = run.rd / "units" / run.unit / "claims"
    ghost = folder / f"{holder['generation'] + 1:06d}.json"
    owner = {k: v for k, v in holder.items() if k not in ("generation", "released")}
    owner.update(worker="9.0", host="node-a-year-ahead", pid=1, pid_start=None, pid_ns="pid:[elsewhere]", job_id=None)
    fd = os.open(ghost, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    ahead = time.time() + point["ahead_s"]
    os.utime(ghost, (ahead, ahead))
    run.notes.update(ghost_generation=holder["generation"] + 1, ghost_mtime=ghost.stat().st_mtime)
    run.notes["first_gather"] = run.wait_gathered()
    run.notes["done_after_first"] = bool(unit_done(run.rd, run.unit))
    time.sleep(point["lease_s"] + 2)  # the lease, counted from the workers' first sight of the stamp
    run.notes["resubmitted_at"] = time.time()
    run.submit(spec, env)


INJECTORS: dict[str, Callable[[TrialRun], None]] = {
    "sigkill": inject_sigkill,
    "preempt": inject_preempt,
    "resubmit": inject_resubmit,
    "node": inject_node,
    "timeout": inject_timeout,
    "readonly": inject_readonly,
    "diskfull": inject_diskfull,
    "workerkill": inject_workerkill,
    "touch": inject_touch,
    "corrupt": inject_corrupt,
    "changed": inject_changed,
    "clock": inject_clock,
    "hostile": inject_hostile,
}

__all__ = ["INJECTORS", "TMPFS_SIZE", "TRIAL_TIMEOUT_S", "TrialRun"]
