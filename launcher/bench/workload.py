"""bench/workload.py: a model shape + shapes -> files on disk: config.json + tokenizer (no weights), datasets, token
ids, so that every system is measured on the same prompts without downloading a model.

The model is a config only: vLLM runs it with load_format dummy (random weights), HF random-initialises it on
the GPU. The tokenizer is a WordLevel vocabulary with exactly one entry per model id, so every sampled id decodes,
and a prompt of k words is exactly k tokens: the toolkit (text -> tokenizer) and the raw baselines (token ids)
see the same prompt tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.seeds import record_seed

RUN_SEED = 42
NUM_SAMPLES = 5
TEMPLATE = "{{ context }}"  # the prompt is the record's context, word for word


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_position: int
    dtype: str

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads,
            "intermediate_size": self.intermediate,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_position,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": self.dtype,
            "bos_token_id": self.vocab - 256,
            "eos_token_id": self.vocab - 255,
            "attention_bias": False,
            "mlp_bias": False,
            "initializer_range": 0.02,
        }


PRESETS = {
    # Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP 14336, vocab 128256), bf16.
    "llama3-8b": ModelPreset("llama3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, "bfloat16"),
    # Llama-3-70B's shape (hidden 8192, 80 layers, 64 heads / 8 KV heads, MLP 28672): 141 GB of bf16 weights, so
    # TP >= 2 on 80-141 GB GPUs (issues 7 and 11: auto must pick it).
    "llama3-70b": ModelPreset("llama3-70b", 8192, 80, 64, 8, 28672, 128256, 8192, "bfloat16"),
    # CPU smoke test of the harness itself: head size 32 is the smallest vLLM's CPU attention runs.
    "tiny": ModelPreset("tiny", 128, 2, 4, 2, 256, 128256, 2048, "float32"),
}


@dataclass(frozen=True)
class Shape:
    samples: int
    max_tokens: int
    prompt_tokens: int = 256
    n: int = NUM_SAMPLES

    @property
    def name(self) -> str:
        return f"{self.samples}x{self.max_tokens}"

    @property
    def records(self) -> int:
        return self.samples // self.n

    @classmethod
    def parse(cls, text: str, prompt_tokens: int = 256, n: int = NUM_SAMPLES) -> Shape:
        samples, tokens = (int(x) for x in text.lower().split("x"))
        if samples % n:
            raise ValueError(f"shape {text}: {samples} samples is not a multiple of n={n}")
        return cls(samples, tokens, prompt_tokens, n)


def word(i: int) -> str:
    return f"w{i}"


def write_model(preset: ModelPreset, out: Path) -> Path:
    """config.json + a tokenizer whose vocabulary is exactly the model's ids. Idempotent."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    config = preset.config()
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    if (out / "tokenizer.json").exists():
        return out
    bos, eos = config["bos_token_id"], config["eos_token_id"]
    vocab = {word(i): i for i in range(preset.vocab)}
    vocab["<bos>"], vocab["<eos>"] = bos, eos
    del vocab[word(bos)], vocab[word(eos)]
    tok = Tokenizer(models.WordLevel(vocab, unk_token=word(0)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token=word(0),
        unk_token=word(0),
        padding_side="left",
    )
    fast.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}) + "\n")
    return out


def prompt_ids(shape: Shape, vocab: int, specials: set[int]) -> list[tuple[str, list[int]]]:
    """(record id, prompt token ids) for every record of the shape; the same ids on every run."""
    rng = random.Random(f"bench-{shape.prompt_tokens}")
    out = []
    for r in range(shape.records):
        ids: list[int] = []
        while len(ids) < shape.prompt_tokens:
            i = rng.randrange(vocab)
            if i not in specials:
                ids.append(i)
        out.append((f"u{r:06d}", ids))
    return out


def write_dataset(shape: Shape, preset: ModelPreset, out: Path) -> tuple[Path, Path]:
    """data JSONL for the toolkit + token ids JSON (with each record's seed) for the raw baselines."""
    out.mkdir(parents=True, exist_ok=True)
    config = preset.config()
    records = prompt_ids(shape, preset.vocab, {config["bos_token_id"], config["eos_token_id"]})
    data = out / f"data-{shape.name}.jsonl"
    ids = out / f"ids-{shape.name}.json"
    with data.open("w") as f:
        for rid, toks in records:
            f.write(json.dumps({"user_id": rid, "context": " ".join(word(i) for i in toks)}) + "\n")
    ids.write_text(
        json.dumps(
            {
                "shape": asdict(shape),
                "run_seed": RUN_SEED,
                "records": [
                    {"record_id": rid, "seed": record_seed(RUN_SEED, rid), "prompt_token_ids": toks}
                    for rid, toks in records
                ],
            }
        )
    )
    return data, ids


def bench_sampling(max_tokens: int) -> dict[str, Any]:
    """The sampling every bench system uses (raw_vllm.py passes the same to SamplingParams)."""
    return {
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 50,
        "max_tokens": max_tokens,
        "seed": RUN_SEED,
        "ignore_eos": True,
    }


def toolkit_spec(
    shape: Shape,
    model_dir: Path,
    data: Path,
    out_dir: Path,
    engine_args: dict[str, Any] | None = None,
    quantization: str | None = None,
    tensor_parallel_size: int | str = "auto",
) -> dict[str, Any]:
    """The job spec `launcher run --spec` gets: same prompts, same sampling as the raw baseline. The data-parallel
    size follows from the visible GPUs and tensor_parallel_size (the toolkit's layout.choose_layout)."""
    model: dict[str, Any] = {
        "path": str(model_dir),
        "backend": "vllm",
        "load_format": "dummy",
        "engine_args": dict(engine_args or {}),
        "tensor_parallel_size": tensor_parallel_size,
    }
    if quantization:
        model["quantization"] = quantization
    return {
        "name": f"bench-{shape.name}",
        "model": model,
        "data": {
            "datasets": [{"name": "synthetic", "path": str(data)}],
            "ablation_configs": ["bench"],
            "templates": {"bench": {"text": TEMPLATE}},
            "num_samples": shape.n,
            "chat_template": False,
        },
        "sampling": bench_sampling(shape.max_tokens),
        "output": {"dir": str(out_dir), "chunk_records": 64},
        "executor": "local",
    }
