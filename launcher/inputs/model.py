"""inputs/model.py: an HF checkpoint folder -> ModelShape (heads, KV heads, layers, weight bytes), so that layouts and
sizing are decided before an engine loads; and the folder's own chat template (model_chat_template), which the plan's
checks (plan/preflight.py, plan/first_rows.py) render. Reads files only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1, "int8": 1}


@dataclass(frozen=True)
class ModelShape:
    architectures: tuple[str, ...]
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position: int
    dtype: str
    weight_bytes: int  # on-disk size of the weights, or an estimate from the shape (dummy checkpoints)
    weight_bytes_source: str

    @property
    def params(self) -> int:
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp + 2 * self.hidden) + 2 * self.vocab * self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V for every layer, all KV heads; divide by TP for one GPU's share."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def weight_bytes_as(self, dtype_bytes: int) -> int:
        """Weights in another dtype (fp8 online quantization halves a bf16 checkpoint)."""
        own = DTYPE_BYTES.get(self.dtype, 2)
        return self.weight_bytes * dtype_bytes // own


def read_config(model_dir: str | Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("text_config", config) if "num_attention_heads" not in config else config


def model_shape(model_dir: str | Path) -> ModelShape:
    c = read_config(model_dir)
    heads = int(c.get("num_attention_heads", 1))
    hidden = int(c.get("hidden_size", 0))
    head_dim = int(c.get("head_dim") or (hidden // heads if heads else 0))
    dtype = str(c.get("torch_dtype") or c.get("dtype") or "bfloat16")
    shape = ModelShape(
        architectures=tuple(c.get("architectures") or ()),
        layers=int(c.get("num_hidden_layers", 0)),
        hidden=hidden,
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        intermediate=int(c.get("intermediate_size", 4 * hidden)),
        vocab=int(c.get("vocab_size", 0)),
        max_position=int(c.get("max_position_embeddings", 8192)),
        dtype=dtype,
        weight_bytes=0,
        weight_bytes_source="",
    )
    on_disk = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or sum(
        p.stat().st_size for p in Path(model_dir).glob("*.bin")
    )
    if on_disk:
        return _replace(shape, on_disk, "size of the weight files")
    return _replace(shape, shape.params * DTYPE_BYTES.get(dtype, 2), "estimated from config.json (no weight files)")


def _replace(shape: ModelShape, weight_bytes: int, source: str) -> ModelShape:
    from dataclasses import replace

    return replace(shape, weight_bytes=weight_bytes, weight_bytes_source=source)


def model_chat_template(model_dir: Path) -> str | None:
    """The chat template transformers would load from a model folder: chat_template.jinja, else tokenizer_config's
    (a string, or the one named "default" of a list)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, ValueError):
            return None
    try:
        value = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) else None
