"""checks.py: the verdict on one trial. Three things must hold whatever the fault:

- no record lost and none generated twice, counted in the units' chunk files (before gather's dedup);
- the gathered outputs byte-identical to the uninterrupted reference run of the same spec;
- the run stayed in its run dir (nothing moved to another one), and its gather job completed.

And the fault must have landed -- cut the unit mid-way, with its trace on record (a failure or requeue record, the
unit claimed again, Slurm's or submitit's own words): a fault that missed proves nothing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..helpers import (
    chunk_files,
    chunk_rows,
    claim_owner,
    job_failures,
    job_log,
    live,
    requeue_markers,
    sacct_states,
    unit_done,
    unit_failures,
    worker_reports,
)

if TYPE_CHECKING:
    from .injectors import TrialRun
    from .trials import Workload

# Compared byte for byte with the reference: everything gather writes except the two files that hold timings
# (inference_summary.json) or their hashes (manifest.json; its other entries are compared).
TIMED_FILES = {"inference_summary.json", "manifest.json"}


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


def judge(run: TrialRun, result: TrialResult) -> TrialResult:
    if run.trial.kind == "hostile":  # its data differs from the reference's on purpose: its own verdict
        from .hostile import judge_hostile

        return judge_hostile(run, result)
    wl, run_dir = run.wl, run.rd
    rows = Counter(chunk_rows(run_dir))
    expected = {(name, row) for name, _, n in wl.datasets for row in range(n)}
    result.lost = len(expected - rows.keys())
    result.duplicated = sum(n - 1 for n in rows.values())
    if rows.keys() - expected:
        result.error = f"rows nobody asked for: {sorted(rows.keys() - expected)[:5]}"
    runs = sorted(p.name for p in (run.out_dir / "runs").iterdir() if p.is_dir())
    if runs != [run_dir.name]:
        result.error = result.error or f"the run left its run dir {run_dir.name}: run dirs now {runs}"
    # No fault here is a unit's own (a crash on one of its records would be): none may count against a unit's
    # retries, or enough preemptions would have every worker skip it.
    # Except an input changed under the run: refusing the unit that reads it is that kind's promise.
    own = "InputChanged: " if run.trial.kind == "changed" else None
    blamed = {
        u: [f.get("error") for f in unit_failures(run_dir, u) if not (own and str(f.get("error")).startswith(own))]
        for u, _ in wl.units
    }
    if any(blamed.values()):
        result.error = result.error or f"unit failure(s) recorded for a fault that is not the unit's: {blamed}"
    result.identical = gathered_files(run.out_dir, wl) == run.reference
    try:
        result.landed, result.evidence = LANDED[run.trial.kind](run)
        if run.trial.kind == "sigkill":
            result.error = result.error or others_restarted(run)
    except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        result.landed, result.evidence = False, f"could not tell: {type(exc).__name__}: {exc}"
    if run.notes.get("gather_state") != "COMPLETED":
        result.error = result.error or f"gather job {run.notes.get('gather_state')}"
    result.passed = (
        result.lost == 0 and result.duplicated == 0 and result.identical and result.landed and not result.error
    )
    return result


# ---------------------------------------------------------------- did the fault land? (per kind)


def _job_of(owner: dict[str, Any]) -> int:
    """A worker slot `<job index>.<replica>` -> the job index."""
    return int(str(owner["worker"]).split(".")[0])


def _taken_again(run: TrialRun, owner: dict[str, Any]) -> tuple[bool, str]:
    """The unit was finished under a later claim than the one the fault hit: it was resumed, not left done."""
    done = unit_done(run.rd, run.unit)
    gen = done.get("generation")
    again = gen is not None and gen > int(owner.get("generation", 0))
    return again, f"{run.unit} finished by worker {done.get('worker')} at claim generation {gen}"


def landed_sigkill(run: TrialRun) -> tuple[bool, str]:
    killed = run.notes["killed"]
    job = _job_of(killed)
    died = [f for f in job_failures(run.rd, job) if f.get("kind") == "died" and "SIGKILL" in f.get("error", "")]
    again, finished = _taken_again(run, killed)
    return (
        bool(died) and again and run.notes["cut_mid_unit"],
        f"killed pid {killed['pid']} (job {job}) after {run.notes['records_at_fault']} record(s); {len(died)} "
        f"SIGKILL failure record(s), requeued by the teardown; {finished}",
    )


def others_restarted(run: TrialRun) -> str:
    """The kill of one worker job's process requeues that job alone: every other job of the array runs on
    (restart 0). An element whose Slurm id is the array's own (the one started last keeps it) must not requeue the
    whole array."""
    job = _job_of(run.notes["killed"])
    jobs = len(run.submissions()[0]["job_ids"])
    again = {j: live(run.rd, j).get("restart") for j in range(jobs) if j != job and live(run.rd, j).get("restart")}
    return f"killing job {job} requeued other job(s) too (job: restart): {again}" if again else ""


def landed_workerkill(run: TrialRun) -> tuple[bool, str]:
    killed = run.notes["killed"]
    job = _job_of(killed)
    seen = [f for f in job_failures(run.rd, job) if f"worker {killed['worker']} exited with -9" in f.get("error", "")]
    again, finished = _taken_again(run, killed)
    done = unit_done(run.rd, run.unit)
    by = "another worker" if done.get("worker") != killed["worker"] else "the same slot after the job's requeue"
    return (
        bool(seen) and again and run.notes["cut_mid_unit"],
        f"killed worker {killed['worker']} (pid {killed['pid']}, a worker process of its own) with "
        f"{run.notes['chunks_at_kill']} chunk(s) written; job {job}: {len(seen)} failure record(s) naming it; "
        f"{finished} ({by})",
    )


def _signalled(run: TrialRun, owner: dict[str, Any], said: str) -> tuple[bool, str]:
    """USR2 reached the worker job that held the unit: submitit's words in its log, the checkpoint's requeue marker,
    and the unit claimed again after its worker gave it back."""
    job = _job_of(owner)
    first = run.submissions()[0]
    caught = job_log(run.rd, first["job_ids"][job]).read_text(errors="replace").count(said)
    markers = requeue_markers(run.rd, job)
    again, finished = _taken_again(run, owner)
    states = sacct_states(first["array_job_id"])
    return (
        bool(markers) and caught > 0 and again and run.notes["cut_mid_unit"],
        f"job {job}: {len(markers)} requeue marker(s), {caught} x '{said}'; {finished}; sacct: {states}",
    )


def landed_preempt(run: TrialRun) -> tuple[bool, str]:
    return _signalled(run, run.notes["holder"], "this job is preempted")


def landed_timeout(run: TrialRun) -> tuple[bool, str]:
    # the unit's first owner is the job whose attempt the time limit cut
    return _signalled(run, claim_owner(run.rd, run.unit, 0), "this job is timed-out")


def landed_resubmit(run: TrialRun) -> tuple[bool, str]:
    subs = run.submissions()
    done = unit_done(run.rd, run.unit)
    after = float(done.get("finished_at") or 0) > run.notes["resubmitted_at"]
    again, finished = _taken_again(run, run.notes["holder"])
    todo = subs[-1].get("units_todo") if len(subs) > 1 else None
    when = "after the resubmit" if after else "BEFORE the resubmit"
    return (
        len(subs) == 2 and bool(todo) and after and again and run.notes["cut_mid_unit"],
        f"resubmitted with {todo} unit(s) to do ({run.notes['submit_said'][-1]!r}); {finished}, {when}",
    )


def landed_node(run: TrialRun) -> tuple[bool, str]:
    notes = run.notes
    back = notes["slurmd_now"] not in (None, notes["slurmd_killed"])
    states = sacct_states(run.submissions()[0]["array_job_id"])
    return back and notes["cut_mid_unit"], f"slurmd {notes['slurmd_killed']} -> {notes['slurmd_now']}; sacct: {states}"


def landed_storage(run: TrialRun) -> tuple[bool, str]:
    """readonly, diskfull: the storage went bad while the unit still had records to write."""
    notes = run.notes
    states = sacct_states(run.submissions()[0]["array_job_id"])
    user = f"; resubmitted {notes['resubmitted']}, which Slurm could not start" if "resubmitted" in notes else ""
    return notes["cut_mid_unit"], (
        f"{notes['records_at_fault']} record(s) of {run.unit} written before the fault; sacct: {states}{user}"
    )


def landed_touch(run: TrialRun) -> tuple[bool, str]:
    """The file got a new date while the unit was mid-way, and the submit after it went to the same run with
    nothing to do (judge() checks that no other run dir appeared)."""
    notes = run.notes
    before, after = notes["mtime_ns"]
    said = notes["submit_said"][-1]
    same = notes["again_dir"] == str(run.rd) and "0 unit(s) to do" in said
    return (
        after != before and same and notes["cut_mid_unit"],
        f"touched {Path(notes['touched']).name} after {notes['records_at_fault']} record(s) of {run.unit}; the "
        f"spec's run id now: {notes['run_id_now']}; the run stayed in {run.rd.name}; submitted again: {said!r}",
    )


def landed_corrupt(run: TrialRun) -> tuple[bool, str]:
    """gather refused the flipped chunk by name; the resubmission regenerated exactly its records, to the same
    bytes (a chunk's name carries its checksum: the same digest came back under a new claim generation)."""
    notes = run.notes
    name = notes["flipped"]
    digest = name.removesuffix(".jsonl").split("-")[-1]
    again = [p.name for p in chunk_files(run.rd, run.unit) if p.name.endswith(f"-{digest}.jsonl") and p.name != name]
    redone = [r for r in worker_reports(run.rd) if float(r.get("started") or 0) >= notes["resubmitted_at"]]
    records = sum(int(r.get("records") or 0) for r in redone)
    one_unit = "1 unit(s) to do" in notes["submit_said"][-1]
    ok = (
        notes["gather_rc"] == 1
        and notes["gather_named_file"]
        and one_unit
        and bool(again)
        and records == notes["rows_in_chunk"]
    )
    return ok, (
        f"flipped bit {run.trial.point['bit']} of byte {notes['offset']} in {name}; gather exit "
        f"{notes['gather_rc']}, named it: {notes['gather_named_file']}; resubmit: "
        f"{notes['submit_said'][-1]!r}; regenerated {records} record(s) (the chunk held "
        f"{notes['rows_in_chunk']}) as {again}"
    )


def landed_changed(run: TrialRun) -> tuple[bool, str]:
    """The rewrite (same size, old mtime) landed while the first unit was mid-way; the second unit was refused with
    a failure naming the file and the fix, nothing of it generated, the first gather incomplete; the original put back,
    the resubmission had exactly that unit to do and finished it."""
    notes = run.notes
    refusals = notes["refusals"]
    named = any(notes["changed"] in r and "again resumes it" in r for r in refusals)
    redone = "1 unit(s) to do" in notes["submit_said"][-1]
    done = unit_done(run.rd, notes["changed_unit"])
    ok = (
        notes["cut_mid_unit"]
        and notes["same_size_mtime"]
        and notes["first_gather"] != "COMPLETED"
        and named
        and notes["rows_of_changed_unit"] == 0
        and redone
        and float(done.get("finished_at") or 0) >= notes["resubmitted_at"]
    )
    return ok, (
        f"rewrote {Path(notes['changed']).name} after {notes['records_at_fault']} record(s) of {run.unit}; first "
        f"gather {notes['first_gather']}; refusals: {[r[:160] for r in refusals]}; "
        f"resubmit: {notes['submit_said'][-1]!r}"
    )


def landed_clock(run: TrialRun) -> tuple[bool, str]:
    """A claim stamped a year ahead took the unit mid-way and never touched it again; the run could not finish it
    then, and the resubmission after the lease took it over (a generation above the stamped one) and finished it."""
    notes = run.notes
    done = unit_done(run.rd, run.unit)
    ghost = notes["ghost_generation"]
    ok = (
        notes["cut_mid_unit"]
        and notes["ghost_mtime"] > time.time() + 300 * 86400
        and not notes["done_after_first"]
        and int(done.get("generation", -1)) > ghost
        and float(done.get("finished_at") or 0) >= notes["resubmitted_at"]
    )
    return ok, (
        f"generation {ghost} stamped a year ahead after {notes['records_at_fault']} record(s) of {run.unit}; first "
        f"gather {notes['first_gather']}; finished at generation {done.get('generation')} after the resubmit "
        f"({notes['submit_said'][-1]!r})"
    )


LANDED: dict[str, Callable[[TrialRun], tuple[bool, str]]] = {
    "sigkill": landed_sigkill,
    "workerkill": landed_workerkill,
    "preempt": landed_preempt,
    "timeout": landed_timeout,
    "resubmit": landed_resubmit,
    "node": landed_node,
    "readonly": landed_storage,
    "diskfull": landed_storage,
    "touch": landed_touch,
    "corrupt": landed_corrupt,
    "changed": landed_changed,
    "clock": landed_clock,
}

__all__ = ["LANDED", "TIMED_FILES", "TrialResult", "gathered_files", "judge"]
