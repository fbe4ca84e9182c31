"""bench/weights.py: a checkpoint with real safetensors files (random values, the preset's shape and dtype), and how
long each vLLM weights loader takes to read it (issue 28: dummy weights hide loading).

    python -m launcher.bench.weights write --model-dir DIR --config-from BENCH_MODEL [--seed S] [--share-from DIR]
    python -m launcher.bench.weights load --model-dir DIR --load-format auto|runai_streamer|fastsafetensors --out J

`write`: HF layout (model-0000k-of-0000n.safetensors of ~5 GB + model.safetensors.index.json), the config and
tokenizer of the bench model; values drawn on the GPU when there is one (16 GB of bf16 for the Llama-3-8B shape).
`--share-from` hard-links every shard of another checkpoint but the last, which is drawn anew: a second checkpoint
of the same shape with other weights (the swap of a `models:` sweep) for ~1/4 of the disk.
`load`: drops the files from the page cache (posix_fadvise DONTNEED: a read from disk, as a job on another node
meets it), starts vLLM with that loader (no compile, no CUDA graphs: only loading differs), generates a few tokens
to prove the weights are usable, and writes how long LLM() took. vLLM's own log has "Loading weights took" and
"Model loading took" (bench/startup_log.py reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

SHARD_BYTES = 5 * 10**9  # HF's default max_shard_size
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def tensor_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Llama checkpoint's tensors, in HF's order (embeddings, layer by layer, norm, head)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        out += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (heads * head_dim, h)),
            (f"{p}.self_attn.k_proj.weight", (kv * head_dim, h)),
            (f"{p}.self_attn.v_proj.weight", (kv * head_dim, h)),
            (f"{p}.self_attn.o_proj.weight", (h, heads * head_dim)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
        ]
    out.append(("model.norm.weight", (h,)))
    if not config.get("tie_word_embeddings"):
        out.append(("lm_head.weight", (v, h)))
    return out


def shard_plan(config: dict[str, Any], itemsize: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensor_shapes(config):
        n = itemsize
        for d in shape:
            n *= d
        if shards[-1] and size + n > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def write_checkpoint(out: Path, config_from: Path, seed: int, share_from: Path | None = None) -> dict[str, Any]:
    """Write the checkpoint (idempotent: a folder with its index is kept). Returns sizes and seconds."""
    import torch
    from safetensors.torch import save_file

    index_path = out / "model.safetensors.index.json"
    if index_path.exists():
        return json.loads((out / "WRITTEN.json").read_text())
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        if (config_from / name).exists():
            shutil.copyfile(config_from / name, out / name)
    config = json.loads((out / "config.json").read_text())
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.get("torch_dtype"), torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    shards = shard_plan(config, torch.tensor([], dtype=dtype).element_size())
    weight_map: dict[str, str] = {}
    total = 0
    for k, tensors in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        weight_map.update({name: fname for name, _ in tensors})
        if share_from is not None and k < len(shards):
            os.link(share_from / fname, out / fname)  # same values: only the last shard differs
            total += (out / fname).stat().st_size
            continue
        data = {}
        for name, shape in tensors:
            if name.endswith("norm.weight"):
                data[name] = torch.ones(shape, dtype=dtype)
            else:
                data[name] = (torch.randn(shape, generator=gen, device=device) * 0.02).to(dtype).cpu()
        save_file(data, str(out / fname), metadata={"format": "pt"})
        total += (out / fname).stat().st_size
        del data
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_path.write_text(json.dumps(index, indent=1))
    info = {
        "bytes": total,
        "shards": len(shards),
        "write_s": round(time.perf_counter() - t0, 2),
        "dtype": str(dtype),
        "shared_from": str(share_from) if share_from else None,
    }
    (out / "WRITTEN.json").write_text(json.dumps(info))
    return info


def drop_page_cache(folder: Path) -> int:
    """Ask the kernel to drop the checkpoint's pages (no root needed for files we can open); the bytes asked for."""
    asked = 0
    for path in sorted(folder.glob("*.safetensors")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            asked += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return asked


def load_once(model_dir: Path, load_format: str, cold: bool) -> dict[str, Any]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM's CPU backend only (the CI smoke test)
    import torch

    dropped = drop_page_cache(model_dir) if cold else 0
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "load_format": load_format,
        "enforce_eager": True,  # no compile, no graphs: only the loading differs between loaders
        "max_model_len": 1024,
        "skip_tokenizer_init": True,
        "seed": 0,
    }
    if not torch.cuda.is_available():
        kwargs["enable_chunked_prefill"] = False
    else:
        kwargs["gpu_memory_utilization"] = 0.85
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    init_s = time.perf_counter() - t0
    out = llm.generate(
        [TokensPrompt(prompt_token_ids=[1, 2, 3, 4])], SamplingParams(max_tokens=4, detokenize=False), use_tqdm=False
    )
    return {
        "vllm": vllm.__version__,
        "load_format": load_format,
        "engine_init_s": round(init_s, 3),
        "page_cache_dropped_bytes": dropped,
        "generated_tokens": len(out[0].outputs[0].token_ids),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--model-dir", required=True)
    w.add_argument("--config-from", required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--share-from", default=None)
    ld = sub.add_parser("load")
    ld.add_argument("--model-dir", required=True)
    ld.add_argument("--load-format", default="auto")
    ld.add_argument("--warm", action="store_true", help="keep the page cache (default: drop it first)")
    ld.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "write":
        info = write_checkpoint(
            Path(args.model_dir), Path(args.config_from), args.seed, Path(args.share_from) if args.share_from else None
        )
        print(json.dumps(info))
        return 0
    Path(args.out).write_text(json.dumps(load_once(Path(args.model_dir), args.load_format, not args.warm)))
    return 0


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    raise SystemExit(main())
