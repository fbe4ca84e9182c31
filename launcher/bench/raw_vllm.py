"""bench/raw_vllm.py: the baseline — plain `LLM.generate`, the way the old inference_vllm.py called it, so that the
toolkit's gain is measured against what users ran before.

One process, one engine, then each shape in turn: all prompts in one generate() call with per-request seeds,
the same prompt token ids and sampling as the toolkit. Engine arguments are vLLM's defaults plus what the old
script passed (tensor_parallel_size, gpu_memory_utilization 0.9, max_model_len 8192, seed), unless --engine-args
gives a hand-picked setting (the sweep). Prints nothing but vLLM's log; writes one JSON.

    python -m launcher.bench.raw_vllm --model DIR --ids ids-1000x256.json [--ids ...] --out raw.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from launcher.job.gpu_monitor import GpuSampler

OLD_SCRIPT_DEFAULTS: dict[str, Any] = {
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "max_model_len": 8192,
    "seed": 42,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ids", action="append", required=True, help="token-id file of a shape (workload.py)")
    p.add_argument("--engine-args", default="{}", help="JSON: extra LLM(...) arguments (hand-picked settings)")
    p.add_argument("--load-format", default="dummy")
    p.add_argument(
        "--warmup-tokens",
        type=int,
        default=0,
        help="first run the same requests with other prompt ids for this many tokens (not timed)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t_process = time.perf_counter()
    # Read by vLLM's CPU backend only (the CI smoke test): a GPU run ignores it.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine_args = {**OLD_SCRIPT_DEFAULTS, **json.loads(args.engine_args)}
    import torch

    if not torch.cuda.is_available():  # CPU smoke runs only: vLLM-CPU's compiled sampler refuses seeded generators
        engine_args.setdefault("enforce_eager", True)
        engine_args.setdefault("enable_chunked_prefill", False)  # engines/vllm/engine.py says why
    if engine_args.get("max_model_len", 0) > _max_position(args.model):
        engine_args["max_model_len"] = _max_position(args.model)
    t0 = time.perf_counter()
    llm = LLM(model=args.model, tokenizer=args.model, load_format=args.load_format, **engine_args)
    engine_init_s = time.perf_counter() - t0
    startup_s = time.perf_counter() - t_process
    results = []
    for ids_file in args.ids:
        work = json.loads(Path(ids_file).read_text())
        shape = work["shape"]
        prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in work["records"]]
        params = [
            SamplingParams(
                n=shape["n"],
                temperature=1.0,
                top_p=0.9,
                top_k=50,
                max_tokens=shape["max_tokens"],
                seed=r["seed"],
                ignore_eos=True,
            )
            for r in work["records"]
        ]
        warmup_s = None
        if args.warmup_tokens:
            # Same batch sizes, other prompts (no prefix-cache hits later): Triton's first-use compiles happen here.
            vocab = llm.llm_engine.model_config.get_vocab_size()
            others = [
                TokensPrompt(prompt_token_ids=[(i + 1) % vocab for i in r["prompt_token_ids"]]) for r in work["records"]
            ]
            short = [p.clone() for p in params]
            for sp in short:
                sp.max_tokens = min(args.warmup_tokens, shape["max_tokens"])
            t0 = time.perf_counter()
            llm.generate(others, short, use_tqdm=False)
            warmup_s = round(time.perf_counter() - t0, 3)
        sampler = GpuSampler(_visible_gpus(torch.cuda.device_count() if torch.cuda.is_available() else 0))
        sampler.start()  # the same NVML figures as a toolkit worker's, over the same (generation) window
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        gen_s = time.perf_counter() - t0
        sampler.stop()
        samples = sum(len(o.outputs) for o in outputs)
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        results.append(
            {
                "shape": f"{shape['samples']}x{shape['max_tokens']}",
                "records": len(prompts),
                "samples": samples,
                "output_tokens": tokens,
                "generation_s": round(gen_s, 3),
                "warmup_s": warmup_s,
                "gpu_monitor": sampler.figures(),
            }
        )
    Path(args.out).write_text(
        json.dumps(
            {
                "vllm": vllm.__version__,
                "engine_args": engine_args,
                "engine_init_s": round(engine_init_s, 3),
                "startup_s": round(startup_s, 3),
                "results": results,
            },
            indent=1,
        )
    )
    return 0


def _visible_gpus(count: int) -> list[str]:
    """The GPUs this process uses, as NVML must be asked for them (CUDA_VISIBLE_DEVICES, else 0..count-1)."""
    visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (visible or [str(i) for i in range(count)])[:count]


def _max_position(model_dir: str) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings", 8192))


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    raise SystemExit(main())
