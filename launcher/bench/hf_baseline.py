"""bench/hf_baseline.py: HF transformers baselines on a subset, with the model random-initialised on the GPU, so that
the old one-user-at-a-time loop and a batched HF call are measured beside the toolkit.

loop:    one user at a time, generate(num_return_sequences=n) — the old per-user loop.
batched: --batch-users users per generate() call (all prompts have the same length: no padding).
Both sample with temperature 1.0, top_p 0.9, top_k 50 and generate exactly max_tokens (min_new_tokens).

    python -m launcher.bench.hf_baseline --model DIR --ids ids.json --loop-users 4 --batch-users 32 --out hf.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ids", action="append", required=True)
    p.add_argument("--loop-users", type=int, default=4)
    p.add_argument("--batch-users", type=int, default=32)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t_process = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = AutoConfig.from_pretrained(args.model)
    dtype = getattr(torch, str(getattr(config, "torch_dtype", None) or "bfloat16").replace("torch.", ""))
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    init_s = time.perf_counter() - t0
    pad = int(config.bos_token_id)
    _generate(model, torch.tensor([[1, 2, 3, 4]], device=device), 2, 4, pad)  # CUDA/cuBLAS warm-up, not timed
    startup_s = time.perf_counter() - t_process
    results: list[dict[str, Any]] = []
    for ids_file in args.ids:
        work = json.loads(Path(ids_file).read_text())
        shape, records = work["shape"], work["records"]
        n, max_tokens = shape["n"], shape["max_tokens"]
        name = f"{shape['samples']}x{max_tokens}"
        if args.loop_users:
            t0 = time.perf_counter()
            tokens = 0
            for r in records[: args.loop_users]:
                torch.manual_seed(r["seed"] % 2**63)
                out = _generate(model, torch.tensor([r["prompt_token_ids"]], device=device), n, max_tokens, pad)
                tokens += out
            results.append(_row("hf-loop", name, args.loop_users, n, tokens, time.perf_counter() - t0))
        if args.batch_users:
            batch = records[: args.batch_users]
            torch.manual_seed(0)
            t0 = time.perf_counter()
            tokens = _generate(
                model, torch.tensor([r["prompt_token_ids"] for r in batch], device=device), n, max_tokens, pad
            )
            results.append(_row("hf-batched", name, len(batch), n, tokens, time.perf_counter() - t0))
        del work
    Path(args.out).write_text(
        json.dumps(
            {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "device": device,
                "model_init_s": round(init_s, 3),
                "startup_s": round(startup_s, 3),
                "results": results,
            },
            indent=1,
        )
    )
    return 0


def _generate(model: Any, input_ids: Any, n: int, max_tokens: int, pad: int) -> int:
    """Generate n samples of exactly max_tokens per row; returns the number of new tokens."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=1.0,
            top_p=0.9,
            top_k=50,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            num_return_sequences=n,
            pad_token_id=pad,
        )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return int((out.shape[1] - input_ids.shape[1]) * out.shape[0])


def _row(system: str, shape: str, users: int, n: int, tokens: int, seconds: float) -> dict[str, Any]:
    return {
        "system": system,
        "shape": shape,
        "records": users,
        "samples": users * n,
        "output_tokens": tokens,
        "generation_s": round(seconds, 3),
    }


if __name__ == "__main__":
    raise SystemExit(main())
