"""bench/scale.py: `launcher bench --systems scale --scale-workers W --scale-units U` -> W real workers on one real run
directory of U units -> how claims, status and gather hold up (docs/scale.md).

Each worker is a process of its own (forked from the benchmark, so 256 of them start in seconds on 2 cores) running
job/worker.py's Worker as a job runs it: the claim loop, the chunk writer, the heartbeat, prompt statistics, done
markers, reports. Only the engine is replaced, by FakeEngine (bench/fake_engine.py): a fixed time per record and
no GPU. Measured, in every worker: each claim's latency (entering the claim loop -> the claim file won), and the
metadata operations under the run directory (bench/op_count.py), split by phase. Then `launcher status` (half-way
and at the end) and `launcher gather` run as a user runs them, and the result is checked: units claimed by two
workers at once, records lost (not in the gathered samples), records generated twice.

wall_vs_ideal = wall clock from the moment every worker exists (they are forked, then let go together, as a Slurm
array's tasks start on their nodes) to the last exit / (units x per-unit time / workers): the part of the run that is
not generating (workers starting, claiming, writing, the tail).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from launcher.bench.scale_shape import ScaleShape

NAMESPACE_KINDS = {"open", "stat", "mkdir", "listdir", "rename", "unlink", "rmdir", "link", "symlink", "truncate"}
METADATA_KINDS = frozenset(NAMESPACE_KINDS | {"utime", "chmod", "chown"})  # attributes set: a round trip each too
FAKE_TOKENS = 16


def write_run(shape: ScaleShape, folder: Path, model: Path) -> Path:
    """A dataset, a spec and its saved plan (what `launcher submit` writes before the jobs start): the run dir."""
    from launcher.plan.persist import save_plan
    from launcher.submit.front_door import prepare

    rows = shape.units // shape.ablations * shape.records_per_unit
    data = folder / "data.jsonl"
    with data.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"user_id": f"u{i:07d}", "context": f"item {i}", "profile": {"n": i}}) + "\n")
    names = [f"a{i:02d}" for i in range(shape.ablations)]
    spec = {
        "name": "scale",
        "model": {"path": str(model), "backend": "hf"},
        "data": {
            "datasets": [{"name": "d", "path": str(data)}],
            "ablation_configs": names,
            "templates": {n: {"text": f"{n}: {{{{ context }}}}"} for n in names},
            "records_per_shard": shape.records_per_unit,
            "num_samples": shape.num_samples,
        },
        "sampling": {"max_tokens": FAKE_TOKENS, "seed": 1},
        "output": {"dir": str(folder / "out")},
        "executor": "local",
        "slurm": {"jobs": shape.workers, "gpus_per_node": 0, "max_retries": 0},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = prepare(path, purpose="submit").plan  # checked, resolved and cut as `launcher submit` does
    if len(plan.units) != shape.units:
        raise ValueError(f"scale: the plan has {len(plan.units)} units, not {shape.units}")
    save_plan(plan)
    return plan.run.root


def _worker(run_dir: Path, index: int, shape: ScaleShape, out: Path) -> None:
    """One worker process: the real Worker, a FakeEngine, counters. Writes what it saw to `out`."""
    from launcher.bench.fake_engine import use_fake_engine
    from launcher.bench.op_count import install
    from launcher.job.worker import Worker, WorkerConfig
    from launcher.plan.layout import ParallelLayout
    from launcher.store import UnitDir

    started = time.time()
    counter = install(str(run_dir))
    engines = use_fake_engine(shape.latency_s, FAKE_TOKENS)
    calls: list[list[Any]] = []  # [t_enter, t_won or None, t_exit, metadata ops, all ops, unit, generation]
    held: list[list[Any]] = []  # [unit, generation, t_won, t_end]
    won: list[Any] = []
    real_claim, real_done, real_release = UnitDir.claim, UnitDir.mark_done, UnitDir.release
    real_next, real_free = Worker._claim_next, Worker._claim_free

    def claim(self: UnitDir, me: Any, fresh: bool = False) -> Any:
        c = real_claim(self, me, fresh)
        if c is not None:
            won[:] = [self.unit_id, c.generation, time.time(), time.thread_time()]
            held.append([self.unit_id, c.generation, won[2], None])
        return c

    def ended(unit_id: str) -> None:
        for h in held:
            if h[0] == unit_id and h[3] is None:
                h[3] = time.time()

    def mark_done(self: UnitDir, done: Any) -> None:
        real_done(self, done)
        ended(self.unit_id)

    def release(self: UnitDir, c: Any) -> None:
        ended(self.unit_id)
        real_release(self, c)

    def timed(claim_loop: Any) -> Any:
        """One claim (the first, with file operations alone, before the engine starts: _claim_free; every later one:
        _claim_next), timed and counted."""

        def timed_claim(self: Worker, *args: Any) -> Any:
            return measured(lambda: claim_loop(self, *args))

        return timed_claim

    def measured(fn: Any) -> Any:
        won.clear()
        before = counter.as_dict().get("claim", {})
        t0, cpu0 = time.time(), time.thread_time()
        with counter.phase("claim"):
            active = fn()
        after = counter.as_dict().get("claim", {})
        diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        meta = sum(v for k, v in diff.items() if k in METADATA_KINDS)
        got = bool(won and active)
        cpu_ms = (won[3] - cpu0) * 1000 if got else (time.thread_time() - cpu0) * 1000
        # [entered, won (None: nothing left), left, metadata ops, all ops, CPU ms to the win, unit, generation]
        calls.append([t0, won[2] if got else None, time.time(), meta, sum(diff.values()), cpu_ms, *won[:2]])
        return active

    UnitDir.claim, UnitDir.mark_done, UnitDir.release = claim, mark_done, release  # type: ignore[method-assign,assignment]
    Worker._claim_next, Worker._claim_free = timed(real_next), timed(real_free)  # type: ignore[method-assign]
    layout = ParallelLayout(1, 1, (), "scale benchmark: a CPU worker with a FakeEngine")
    result: dict[str, Any] = {"index": index, "pid": os.getpid(), "started": started}
    try:
        report = Worker(WorkerConfig(run_dir, index, 0, layout)).run()
        result["state"] = report.get("state")
    except BaseException as exc:  # the parent reports it; the run's checks then show what it cost
        result["error"] = "".join(traceback.format_exception(exc))[-4000:]
    result.update(
        calls=calls, held=held, ops=counter.as_dict(), generated=sum(e.generated for e in engines), ended=time.time()
    )
    out.write_text(json.dumps(result))


def _spawn(run_dir: Path, shape: ScaleShape, results: Path) -> dict[int, int]:
    """Fork the workers (imports and the interpreter are shared: what is measured is the workers, not 256 Python
    start-ups), then let them all start at once. Each child runs one worker and exits without returning here."""
    import gc

    from launcher.bench import fake_engine  # noqa: F401  (imported once, before the forks)
    from launcher.job.prepare import load_tokenizer
    from launcher.plan.persist import load_plan

    load_tokenizer(load_plan(run_dir).spec)  # imports transformers (and torch) here, once for every worker
    gc.freeze()  # the children's collector leaves the shared objects alone: their pages stay shared
    gate_r, gate_w = os.pipe()  # every worker waits here until all are forked: they start together, as an array does
    pids: dict[int, int] = {}
    for k in range(shape.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(gate_w)
                os.read(gate_r, 1)  # end of file once the parent closes its end
                os.close(gate_r)
                _worker(run_dir, k, shape, results / f"{k}.json")
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids[pid] = k
    gc.unfreeze()
    os.close(gate_r)
    os.close(gate_w)  # go
    return pids


def _timed_cli(*args: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """`launcher ARGS` as a user runs it: (wall s, CPU s of the process from wait4, its result)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_scale(wd: Path, shape: ScaleShape, timeout_s: float, model: Path | None = None) -> dict[str, Any]:
    """One measurement (a row of results.json). `model`: a model folder for its tokenizer (default: a tiny one made
    under `wd`)."""
    from launcher.demo_model import make_demo_model

    shape.check()
    if model is None:
        model = wd / "assets" / "scale-model"
        if not (model / "config.json").exists():
            make_demo_model(model)
    folder = wd / shape.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run_dir = write_run(shape, folder, model)
    results = folder / "workers"
    results.mkdir()
    from launcher.store import RunDir

    view = RunDir(run_dir).unit_view()
    loads = [_loadavg()]
    forking = time.time()
    pids = _spawn(run_dir, shape, results)
    t0 = time.time()  # every worker exists: the run starts (as a Slurm array does on its nodes)
    forked_s = t0 - forking
    exits: dict[int, tuple[int, float]] = {}
    status_mid: tuple[float, float, subprocess.CompletedProcess[str]] | None = None
    last_load = time.time()
    while len(exits) < len(pids):
        pid, code = os.waitpid(-1, os.WNOHANG)
        if pid:
            exits[pids[pid]] = (os.waitstatus_to_exitcode(code), time.time())
            continue
        if time.time() - t0 > timeout_s:
            for p in set(pids) - {p for p, k in pids.items() if k in exits}:
                os.kill(p, 9)
            raise TimeoutError(f"{shape.name}: still running after {timeout_s:.0f} s")
        view.refresh()
        if status_mid is None and len(view.done) >= shape.units // 2:
            status_mid = _timed_cli("status", str(run_dir), "--json")
        if time.time() - last_load >= 10:
            loads.append(_loadavg())
            last_load = time.time()
        time.sleep(0.5)
    wall = max(t for _, t in exits.values()) - t0
    status_end = _timed_cli("status", str(run_dir), "--json")
    gather = _timed_cli("gather", str(run_dir))
    loads.append(_loadavg())
    workers = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    from launcher.bench.scale_figures import measure

    row = measure(shape, run_dir, workers, exits, t0, wall, status_mid, status_end, gather, loads)
    row["fork_loop_s"] = round(forked_s, 2)
    return row


__all__ = ["FAKE_TOKENS", "METADATA_KINDS", "ScaleShape", "run_scale", "write_run"]
