"""Workers and claims: one engine runs many units, workers claim each unit once, a dead worker's unit is taken over,
engine starts of two workers overlap, throughput is measured by the wall clock, damaged chunks are regenerated.

Real parts throughout: real processes racing on real files, the real tiny model through HF (and vLLM's CPU build
where the compile cache is involved)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from launcher.gather import GatherError, gather
from launcher.job.entry import run_job
from launcher.plan import expand
from launcher.plan.persist import load_plan, save_plan
from launcher.spec import load_spec
from launcher.store import ClaimBook, Owner
from launcher.store.claims import owner_is_dead

from .conftest import ROOT, USERS, launcher, make_spec, read_samples, write_jsonl

MANY = [{**u, "user_id": f"{u['user_id']}-{k}"} for k in range(3) for u in USERS]  # 30 users


def _plan(spec_path: Path, overrides: list[str] | None = None):  # type: ignore[no-untyped-def]
    plan = expand(load_spec(spec_path, overrides or []))
    save_plan(plan)
    return plan


def _clean(spec_path: Path, tmp_path: Path) -> list[dict]:
    plan = _plan(spec_path, ["output.dir=" + str(tmp_path / "clean"), "data.records_per_shard=1000"])
    run_job(plan.run.root, 0)
    return [row for r in gather(plan) for row in read_samples(r.out_dir)]


# -- claims ---------------------------------------------------------------------------------------------------------


def _race(folder: str, worker: str, barrier: Any, done: Any, out: Any) -> None:
    barrier.wait()
    claim = ClaimBook(Path(folder)).try_claim(Owner.me(worker))
    out.put((worker, claim.generation if claim else None))
    done.wait()  # stay alive until every racer has tried: a winner that exits is a dead owner, taken over


def test_exactly_one_of_many_racing_workers_wins_a_claim(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier, done, out = ctx.Barrier(8), ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "claims"), f"0.{i}", barrier, done, out)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    results = [out.get(timeout=5) for _ in procs]
    winners = [w for w, gen in results if gen is not None]
    assert len(winners) == 1, results
    # the winner's process has exited now: on this host that is a dead owner, so the next claim takes generation 1
    me = Owner.me("9.0")
    claim = ClaimBook(tmp_path / "claims").try_claim(me)
    assert claim is not None and claim.generation == 1


def test_dead_owner_rules(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path / "c")
    me = Owner.me("0.0")
    live_elsewhere = replace(me, worker="1.0", host="other-node", pid=1)
    book.folder.mkdir()
    (book.folder / "000000.json").write_text(json.dumps(live_elsewhere.__dict__))
    head = book.head()
    assert head is not None and not owner_is_dead(head, me, lease=60)  # fresh heartbeat on another node: alive
    assert owner_is_dead(head, me, lease=0)  # no heartbeat within the lease: dead
    assert book.try_claim(me, lease=60) is None
    # our own slot of this Slurm job before a requeue is dead at once, whatever its heartbeat says
    earlier = replace(me, job_id="77", restart=0, host="other-node")
    assert owner_is_dead(replace(head, owner=earlier), replace(me, job_id="77", restart=1), lease=3600)
    # a process of this host that has exited is dead at once; one that runs is alive without any lease
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = replace(me, worker="2.0", pid=child.pid, pid_start=None)
    assert owner_is_dead(replace(head, owner=gone), me, lease=3600)
    alive = replace(me, worker="2.0", pid=os.getppid(), pid_start=None)
    assert not owner_is_dead(replace(head, owner=alive, age_s=10**6), me, lease=1)
    # released: free at once, and the old owner sees it is no longer his
    claim = book.try_claim(me, lease=0)
    assert claim is not None and claim.generation == 1 and book.still_mine(claim)
    book.release(claim)
    other = replace(me, worker="3.0")
    taken = book.try_claim(other, lease=3600)
    assert taken is not None and taken.generation == 2 and not book.still_mine(claim)


# -- one engine, many units; claims between workers ---------------------------------------------------------------


def test_one_engine_load_runs_every_unit(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", MANY)
    spec = make_spec(
        tmp_path, tiny_model, data, data={"records_per_shard": 4, "ablation_configs": ["full", "context_only"]}
    )
    plan = _plan(spec)
    assert len(plan.units) == 16
    result = run_job(plan.run.root, 0)
    (report,) = result["workers"]
    assert report["state"] == "done" and len(report["units_done"]) == 16
    # one engine for all of them: one worker process report, one engine start
    reports = plan.run.worker_reports()
    assert len(reports) == 1 and reports[0]["engine"]["startup"] is not None
    assert sum(1 for r in reports if r.get("engine_ready_at")) == 1
    rows = [row for r in gather(plan) for row in read_samples(r.out_dir)]
    assert sorted((r["ablation"], r["record_id"], r["generated_samples"][0]) for r in rows) == sorted(
        (r["ablation"], r["record_id"], r["generated_samples"][0]) for r in _clean(spec, tmp_path)
    )
    for unit in plan.units:  # each unit done once, by generation 0: nobody else ever claimed it
        assert plan.run.unit(unit.unit_id).read_done()["generation"] == 0


@pytest.mark.slow
def test_two_workers_split_the_units_and_rate_is_by_wall_clock(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", MANY)
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        data={"records_per_shard": 3},
        slurm={"jobs": 2},
        sampling={"max_tokens": 16},
        model={"hf_batch_size": 1},
    )
    # 0.2 s per record: the tiny model alone finishes before the second worker's engine is up
    proc = launcher("submit", str(spec), "--wait", env={"LAUNCHER_FAULT_SLOW_S": "0.2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = load_plan(next((tmp_path / "out" / "runs").iterdir()))
    reports = [r for r in plan.run.worker_reports() if r.get("engine_ready_at")]
    assert sorted(r["slot"] for r in reports) == ["0.0", "1.0"]
    assert all(r["units_done"] for r in reports), "both workers must have run units"
    done_by = [set(r["units_done"]) for r in reports]
    assert not done_by[0] & done_by[1] and done_by[0] | done_by[1] == {u.unit_id for u in plan.units}
    summary = json.loads((tmp_path / "out" / "users" / "full" / "inference_summary.json").read_text())
    run = summary["run"]
    # wall clock: samples/s x the generation window gives the samples back, and that window is no longer than
    # the two workers' own windows laid end to end (they overlapped), nor shorter than the longer one
    assert run["samples"] == summary["total_samples"] == len(MANY) * 2
    assert abs(run["samples_per_sec"] * run["generation_wall_s"] - run["samples"]) < 0.01 * run["samples"] + 0.5
    own = [w["generation_s"] for w in summary["workers"] if w["generation_s"]]
    assert max(own) <= run["generation_wall_s"] + 1e-6 < sum(own)
    assert 0 < run["busy_fraction"] <= 1 and run["gpu_busy_fraction"] is None  # CPU workers: no GPU figure
    status = launcher("status", str(plan.run.root), "--json")
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["counts"] == {"DONE": len(plan.units)} and len(st["workers"]) == 2


@pytest.mark.slow
def test_kill_9_worker_mid_unit_another_worker_finishes_it(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", MANY)
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        data={"records_per_shard": 3},
        slurm={"jobs": 2},
        model={"hf_batch_size": 1},
        output={"chunk_records": 1},
    )
    plan = _plan(spec)
    env = {**os.environ, "LAUNCHER_FAULT_SLOW_S": "0.15"}
    cmd = [sys.executable, "-m", "launcher", "run", "--spec", str(plan.run.root), "--job"]
    victim = subprocess.Popen([*cmd, "0"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    held = None
    while time.time() < deadline and held is None:  # wait until the victim has written part of a unit
        for unit in plan.units:
            udir = plan.run.unit(unit.unit_id)
            head = udir.claims.head()
            if head and head.owner.worker == "0.0" and udir.chunk_files() and not udir.is_done():
                held = unit.unit_id
                break
        time.sleep(0.02)
    assert held is not None, "the victim never got half-way through a unit"
    survivor = subprocess.Popen([*cmd, "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert survivor.wait(240) == 0
    udir = plan.run.unit(held)
    done = udir.read_done()
    assert done["worker"] == "1.0" and done["generation"] >= 1  # taken over from the dead process
    rows = [row for r in gather(plan) for row in read_samples(r.out_dir)]
    assert sorted(r["record_id"] for r in rows) == sorted(u["user_id"] for u in MANY)  # 0 lost, 0 duplicated
    assert rows == _clean(spec, tmp_path)  # byte for byte what one clean worker writes


# -- engine starts overlap (vLLM: the compile cache must not serialize them) --------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_two_vllm_workers_start_their_engines_at_the_same_time(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("vllm")
    data = write_jsonl(tmp_path / "d.jsonl", MANY[:12])
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        model={"backend": "vllm"},
        data={"records_per_shard": 6},
        slurm={"jobs": 2},
        sampling={"max_tokens": 8},
    )
    proc = launcher(
        "submit",
        str(spec),
        "--wait",
        env={"LAUNCHER_COMPILE_CACHE": str(tmp_path / "cc"), "LAUNCHER_SCRATCH": str(tmp_path / "scratch")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = load_plan(next((tmp_path / "out" / "runs").iterdir()))
    starts = sorted(
        (r["engine"]["startup"]["engine_start_at"], r["engine"]["startup"]["engine_ready_at"])
        for r in plan.run.worker_reports()
        if r.get("engine")
    )
    assert len(starts) == 2
    (a0, a1), (b0, b1) = starts
    assert b0 < a1, f"the second engine started {b0 - a1:.1f} s after the first was up: starts were serialized"
    assert min(a1, b1) - max(a0, b0) > 0.5 * min(a1 - a0, b1 - b0)  # they overlap for most of the shorter one


# -- checked chunks ---------------------------------------------------------------------------------------------


def test_damaged_or_missing_chunk_is_regenerated_exactly(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file, output={"chunk_records": 2}, data={"records_per_shard": 5})
    plan = _plan(spec)
    run_job(plan.run.root, 0)
    reports = gather(plan)
    before = {r.ablation: (r.out_dir / "samples.jsonl").read_bytes() for r in reports}
    unit = plan.run.unit(plan.units[0].unit_id)
    chunks = unit.chunk_files()
    flipped = chunks[0]
    data = bytearray(flipped.read_bytes())
    data[10] ^= 0x01  # one flipped bit inside a stored chunk
    flipped.write_bytes(bytes(data))
    chunks[1].write_bytes(chunks[1].read_bytes()[:7])  # and one truncated: never a JSONDecodeError
    with pytest.raises(GatherError) as err:
        gather(plan)
    assert flipped.name in str(err.value) and "fails its checksum" in str(err.value)
    assert not unit.is_done()  # reopened: a resubmit regenerates it
    proc = launcher("submit", str(spec), "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 unit(s) to do" in proc.stdout
    after = {r.ablation: (r.out_dir / "samples.jsonl").read_bytes() for r in gather(plan)}
    assert after == before  # the same bytes: regenerated records have the same seeds
    # only the damaged chunks' rows were generated again
    reports_after = [r for r in plan.run.worker_reports() if r.get("records")]
    assert reports_after[-1]["records"] == 4


def test_deleted_chunk_makes_submit_regenerate_not_loop(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file, output={"chunk_records": 3})
    proc = launcher("submit", str(spec), "--wait")
    assert proc.returncode == 0, proc.stderr
    plan = load_plan(next((tmp_path / "out" / "runs").iterdir()))
    before = (plan.run.final_dir("users", "full") / "samples.jsonl").read_bytes()
    unit = plan.run.unit(plan.units[0].unit_id)
    unit.chunk_files()[-1].unlink()
    again = launcher("submit", str(spec), "--wait")  # not "already done": the unit is checked and reopened
    assert again.returncode == 0 and "1 unit(s) to do" in again.stdout, again.stdout + again.stderr
    assert (plan.run.final_dir("users", "full") / "samples.jsonl").read_bytes() == before
