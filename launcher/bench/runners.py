"""bench/runners.py: one measured system -> measurement dicts. Each system runs in its own process, so every engine
starts from a clean GPU and its start-up is measured the way a user meets it.

  toolkit   `python -m launcher run --spec S`: one job on the visible GPUs (one worker per GPU group) -> outputs
            gathered; figures from the run's wall-clock summary (runs/<id>/summary.json)
  raw       bench/raw_vllm.py: LLM.generate with the old script's defaults (or hand-picked engine args)
  hf        bench/hf_baseline.py: transformers, one user at a time and batched, on a subset
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.bench.startup_log import parse_startup, split
from launcher.bench.workload import Shape, toolkit_spec
from launcher.gather.throughput import summarize_gpu_samples
from launcher.store import GpuFigures, OutputDir, RunDir

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def assets(self) -> Path:
        return self.root / "assets"

    @property
    def model(self) -> Path:
        return self.assets / "model"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def data(self, shape: Shape) -> Path:
        return self.assets / f"data-{shape.name}.jsonl"

    def ids(self, shape: Shape) -> Path:
        return self.assets / f"ids-{shape.name}.json"


class RunFailed(RuntimeError):
    pass


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _run(
    cmd: Sequence[str], log: Path, env: dict[str, str], timeout_s: float, cwd: Path | None = None
) -> tuple[float, str]:
    """Run to completion with output in `log`; (wall seconds, log text). Raises RunFailed with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(
                list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd or REPO, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -9
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise RunFailed(f"{cmd[2] if len(cmd) > 2 else cmd[0]} exited with {rc} after {wall:.0f}s; log {log}:\n{tail}")
    return wall, text


GPU_COLUMNS = ("gpu_util_mean_pct", "gpu_util_p10_pct", "gpu_memory_peak_gib", "gpu_hours", "samples_per_gpu_hour")


def gpu_columns(sampled: list[GpuFigures], wall_s: float, samples: int) -> dict[str, Any]:
    """A raw process's NVML figures as the toolkit's summary has them; GPU-hours: its wall x the GPUs it sampled."""
    figs = summarize_gpu_samples(sampled)
    gpus = max((len(g.get("devices") or []) for g in sampled), default=0)
    hours = wall_s * gpus / 3600
    return {
        **{k: figs.get(k) for k in GPU_COLUMNS if k in figs},
        "gpu_hours": round(hours, 4) if gpus else None,
        "samples_per_gpu_hour": round(samples / hours, 1) if gpus and hours else None,
    }


def measurement(system: str, shape: Shape, samples: int, tokens: int, gen_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "system": system,
        "shape": shape.name,
        "samples": samples,
        "output_tokens": tokens,
        "generation_s": round(gen_s, 3),
        "samples_per_min": round(samples / gen_s * 60, 1) if gen_s else None,
        "output_tok_per_s": round(tokens / gen_s, 1) if gen_s else None,
        **extra,
    }


def run_toolkit(
    wd: Workdir,
    shape: Shape,
    system: str,
    cache_root: Path,
    timeout_s: float,
    engine_args: dict[str, Any] | None = None,
    quantization: str | None = None,
    tensor_parallel_size: int | str = "auto",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One `launcher run` (one job holding every visible GPU) in a fresh output folder, compile cache at
    `cache_root`. Figures by the wall clock across the job's workers."""
    import yaml

    out_dir = wd.root / "toolkit-out" / system.replace(":", "_").replace("=", "").replace("+", "_")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    spec = toolkit_spec(shape, wd.model, wd.data(shape), out_dir, engine_args, quantization, tensor_parallel_size)
    spec_path = out_dir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_env = _env(
        {
            "LAUNCHER_COMPILE_CACHE": str(cache_root),
            "LAUNCHER_SCRATCH": str(wd.root / "scratch"),
            "LAUNCHER_HISTORY": str(wd.root / "history.json"),
            **(env or {}),
        }
    )
    wall, log = _run(
        [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path)],
        wd.logs / f"{system}@{shape.name}.log".replace(":", "_"),
        run_env,
        timeout_s,
    )
    return toolkit_measurement(
        system,
        shape,
        out_dir,
        wall,
        log,
        engine_args=engine_args or {},
        quantization=quantization,
        cuda_visible_devices=run_env.get("CUDA_VISIBLE_DEVICES"),
    )


def toolkit_measurement(
    system: str, shape: Shape, out_dir: Path, wall: float, log: str, **extra: Any
) -> dict[str, Any]:
    """A finished toolkit run -> one measurement: the run's wall-clock figures, each worker beside them."""
    run_dir = OutputDir(out_dir).runs()[0]
    summary = final_figures(run_dir)
    run = summary["run"]
    reports: list[dict[str, Any]] = [dict(r) for r in run_dir.worker_reports()]
    engines = [r for r in reports if r.get("engine")]
    main = engines[0] if engines else {}
    engine = main.get("engine") or {}
    parsed = parse_startup(log)
    first = sorted((r for r in reports if r.get("first_request_at") and r.get("started")), key=lambda r: r["started"])
    return measurement(
        system,
        shape,
        run["samples"],
        run["output_tokens"],
        run["generation_wall_s"],
        wall_s=round(wall, 2),
        # issue 28: the first worker's process start -> its first request (engine_ready_warm_s / _cold_s)
        engine_ready_s=round(first[0]["first_request_at"] - first[0]["started"], 2) if first else None,
        startup_timeline=main.get("startup_timeline"),
        startup=split(run.get("startup_s_max") or 0.0, parsed),
        startup_log=parsed,
        compile_cache=sorted({str((r["engine"].get("startup") or {}).get("compile_cache")) for r in engines}),
        startup_phases=main.get("startup_phases"),
        settings=engine.get("settings"),
        reasons=engine.get("reasons"),
        engine_version=engine.get("version"),
        records=sum(int(r.get("records") or 0) for r in reports),
        layout=summary.get("layout"),
        replicas=len(engines),
        gpu_busy_fraction=run.get("gpu_busy_fraction"),
        prefix_cache_hit_rate=run.get("prefix_cache_hit_rate"),
        prefix_order=main.get("prefix_order"),
        **{k: run.get(k) for k in GPU_COLUMNS},
        workers=summary.get("workers"),
        timing="wall clock across all workers",
        **extra,
    )


def final_figures(run_dir: RunDir, timeout_s: float = 120.0) -> dict[str, Any]:
    """The run's wall-clock figures (summary.json's content) once every worker process has written its last report.
    `launcher submit --wait` gathers as soon as the last unit is done, which on a loaded machine can come before
    its worker's final report: that summary may lack the generation window (measured: 0.0 s on 2 busy cores)."""
    from launcher.gather.throughput import run_figures
    from launcher.plan.persist import load_plan

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reports = run_dir.worker_reports()
        if reports and all(r.get("ended") for r in reports):
            break
        time.sleep(1.0)
    return run_figures(load_plan(run_dir.root)).as_json()


def raw_env(cache: Path) -> dict[str, str]:
    """The environment of a raw-vLLM process: vLLM's own caches (what a user's script gets), kept under `cache`."""
    return _env(
        {
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "TRITON_CACHE_DIR": str(cache / "triton"),
        }
    )


def run_raw(
    wd: Workdir,
    shapes: Sequence[Shape],
    system: str,
    timeout_s: float,
    engine_args: dict[str, Any] | None = None,
    warmup_tokens: int = 0,
) -> list[dict[str, Any]]:
    """One process, one engine, all `shapes` in turn. e2e wall: the process's own wall (exit included, as for the
    toolkit) when it ran one shape; else start-up + that shape's generation."""
    cache = wd.root / "raw-cache"
    env = raw_env(cache)
    out = wd.runs / f".{system}.raw.json".replace(":", "_")
    cmd = [
        sys.executable,
        "-m",
        "launcher.bench.raw_vllm",
        "--model",
        str(wd.model),
        "--out",
        str(out),
        "--engine-args",
        json.dumps(engine_args or {}),
        "--warmup-tokens",
        str(warmup_tokens),
    ]
    for shape in shapes:
        cmd += ["--ids", str(wd.ids(shape))]
    names = "+".join(s.name for s in shapes)
    wall, log = _run(cmd, wd.logs / f"{system}@{names}.log".replace(":", "_"), env, timeout_s)
    raw = json.loads(out.read_text())
    parsed = parse_startup(log)
    rows = []
    by_name = {s.name: s for s in shapes}
    for r in raw["results"]:
        rows.append(
            measurement(
                system,
                by_name[r["shape"]],
                r["samples"],
                r["output_tokens"],
                r["generation_s"],
                wall_s=round(
                    wall - (r.get("warmup_s") or 0) if len(shapes) == 1 else raw["startup_s"] + r["generation_s"], 2
                ),
                startup=split(raw["startup_s"], parsed),
                startup_log=parsed,
                engine_args=raw["engine_args"],
                engine_version=f"vllm {raw['vllm']}",
                records=r["records"],
                process_wall_s=round(wall, 2),
                warmup_s=r.get("warmup_s"),
                **gpu_columns([r["gpu_monitor"]] if r.get("gpu_monitor") else [], wall, r["samples"]),
            )
        )
    return rows


def run_hf(
    wd: Workdir, shapes: Sequence[Shape], loop_users: int, batch_users: int, timeout_s: float
) -> list[dict[str, Any]]:
    out = wd.runs / ".hf.raw.json"
    cmd = [
        sys.executable,
        "-m",
        "launcher.bench.hf_baseline",
        "--model",
        str(wd.model),
        "--out",
        str(out),
        "--loop-users",
        str(loop_users),
        "--batch-users",
        str(batch_users),
    ]
    for shape in shapes:
        cmd += ["--ids", str(wd.ids(shape))]
    _run(cmd, wd.logs / "hf.log", _env({}), timeout_s)
    raw = json.loads(out.read_text())
    by_name = {s.name: s for s in shapes}
    return [
        measurement(
            r["system"],
            by_name[r["shape"]],
            r["samples"],
            r["output_tokens"],
            r["generation_s"],
            records=r["records"],
            subset=True,
            startup={"total_s": raw["startup_s"], "load_s": raw["model_init_s"]},
            engine_version=f"transformers {raw['transformers']}",
        )
        for r in raw["results"]
    ]
