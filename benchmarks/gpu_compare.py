"""gpu_compare.py: HF transformers vs vLLM, greedy, on the GPU, through `launcher run` and `launcher compare`.

Both backends need the same weights, so this cannot use the benchmark's dummy-weight 8B shape (vLLM's dummy
loader and HF's random init differ): it saves a small random Llama with real weights (a tokenizer trained here),
runs the same spec with `backend: hf` and `backend: vllm` for each dtype, and compares token ids record by record.

  python -m benchmarks.gpu_compare --workdir /tmp/cmp --out results.json [--dtypes float32,bfloat16]

With random weights the logits of the top two tokens are often close, so bf16 rounding flips some argmaxes and
the two runs diverge from there: fp32 is the dtype where agreement says the engines compute the same model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_model(folder: Path, hidden: int, layers: int, heads: int) -> Path:
    """The demo model's tokenizer and recipe, at a size where the GPU kernels (not the CPU fallbacks) run."""
    from launcher.demo_model import make_demo_model

    if not (folder / "config.json").exists():
        make_demo_model(folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 4),
            head_dim=hidden // heads,
        )
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)}))
        model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_data(path: Path, users: int) -> Path:
    from launcher.demo_model import corpus

    lines = corpus(users * 3, seed=1)
    rows = [
        {"user_id": f"u{i:04d}", "profile": lines[3 * i], "history": lines[3 * i + 1], "context": lines[3 * i + 2]}
        for i in range(users)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_backend(workdir: Path, model: Path, data: Path, backend: str, dtype: str, max_tokens: int) -> Path:
    out = workdir / f"{backend}-{dtype}"
    spec = {
        "name": f"cmp-{backend}-{dtype}",
        "model": {"path": str(model), "backend": backend, "dtype": dtype},
        "data": {"datasets": [{"name": "users", "path": str(data)}], "ablation_configs": ["full"], "num_samples": 1},
        "sampling": {"temperature": 0, "max_tokens": max_tokens, "seed": 7},
        "output": {"dir": str(out), "token_ids": True},
        "executor": "local",
    }
    spec_path = workdir / f"{backend}-{dtype}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = workdir / f"{backend}-{dtype}.log"
    with log.open("w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        ).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"{backend} {dtype} failed ({rc}); see {log}:\n{tail}")
    return out / "users" / "full"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON with one comparison per dtype")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = make_model(args.workdir / "model", args.hidden, args.layers, args.heads)
    data = write_data(args.workdir / "users.jsonl", args.users)
    results: dict[str, Any] = {
        "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads},
        "users": args.users,
        "max_tokens": args.max_tokens,
        "by_dtype": {},
    }
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        t0 = time.perf_counter()
        hf = run_backend(args.workdir, model, data, "hf", dtype, args.max_tokens)
        vl = run_backend(args.workdir, model, data, "vllm", dtype, args.max_tokens)
        proc = subprocess.run(
            [sys.executable, "-m", "launcher", "compare", str(hf), str(vl), "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        results["by_dtype"][dtype] = {**json.loads(proc.stdout), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[compare] {dtype}: agreement {results['by_dtype'][dtype]['agreement']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
