"""plan/model_checks.py: the checkpoint a task will load, checked before anything is submitted (part of preflight), so
that a checkpoint the engine cannot load fails at plan time with exit 2.

The folder holds a config, weights and a tokenizer; the quantization asked for matches the checkpoint's; the tensor
parallel size splits the heads and fits the GPUs asked for (over several nodes too); the context holds max_tokens;
each LoRA adapter is a peft folder. Reads files only; each error points at the spec line that set the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from launcher.engines import registry
from launcher.errors import SpecError
from launcher.inputs.model import ModelShape, model_shape
from launcher.spec import JobSpec

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def check_model(spec: JobSpec, key: tuple[str | int, ...] = ("model", "path")) -> ModelShape:
    folder = Path(spec.model.path)
    hf = "a folder with an HF checkpoint: config.json, weights (*.safetensors), tokenizer files"
    if not folder.exists():
        raise spec.error(
            key,
            f"not a folder: {folder} does not exist",
            hf,
            "check the path (relative paths are read from the spec's folder); `launcher demo-model DIR` "
            "makes a tiny model to try things with",
        )
    if not folder.is_dir():
        raise spec.error(key, f"{folder} is a file, not a folder", hf, "point at the checkpoint's folder")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        names = os.listdir(folder)
    except FileNotFoundError:
        raise spec.error(
            key,
            f"no config.json in {folder}: not an HF-format checkpoint",
            hf,
            "point at the folder holding config.json; convert other formats with transformers first",
        ) from None
    except PermissionError as exc:
        raise spec.error(
            key,
            f"cannot read {exc.filename or folder}: permission denied",
            hf,
            "tasks run as you: give yourself read access (chmod -R u+rX, or ask the folder's owner)",
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise spec.error(
            key,
            f"cannot read {config_path}: {exc}",
            hf,
            "config.json must be the JSON file transformers wrote (save_pretrained)",
        ) from None
    if not isinstance(config, dict):
        raise spec.error(
            key,
            f"{config_path} holds a {type(config).__name__}, not a JSON object",
            hf,
            "config.json must be the JSON object transformers wrote (save_pretrained)",
        )
    weights = sorted(p for g in WEIGHT_GLOBS for p in folder.glob(g))
    if spec.model.load_format != "dummy":
        if not weights:
            raise spec.error(
                key,
                f"no weight files ({', '.join(WEIGHT_GLOBS)}) in {folder}",
                hf,
                "copy the weights next to config.json, or set model.load_format: dummy to benchmark the "
                "architecture with random weights",
            )
        try:
            with weights[0].open("rb") as f:
                f.read(1)
        except OSError as exc:
            raise spec.error(
                key,
                f"cannot read {weights[0]}: {exc.strerror}",
                hf,
                "tasks run as you: give yourself read access to the weight files",
            ) from None
    if not any(n in names for n in TOKENIZER_FILES):
        raise spec.error(
            key,
            f"no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)})",
            hf,
            "save the tokenizer into the checkpoint folder (tokenizer.save_pretrained(folder))",
        )
    check_quantization(spec, config, config_path)
    try:
        return model_shape(folder)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise spec.error(
            key,
            f"{config_path}: unusable model shape ({exc})",
            hf,
            "num_attention_heads, num_key_value_heads, hidden_size must be positive integers",
        ) from None


QUANT_FAMILIES = {
    "awq": "awq",
    "auto_awq": "awq",
    "awq_marlin": "awq",
    "gptq": "gptq",
    "auto_gptq": "gptq",
    "gptq_marlin": "gptq",
    "marlin": "gptq",
    "compressed-tensors": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "gguf": "gguf",
    "modelopt": "modelopt",
    "quark": "quark",
}
ONLINE = (
    "fp8",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "online",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "mxfp8",
    "torchao",
    "experts_int8",
)  # quantize an unquantized checkpoint as it loads


def check_quantization(spec: JobSpec, config: dict[str, Any], config_path: Path) -> None:
    """model.quantization (--quantization) against what the checkpoint is: the guide's AWQ path made 4-bit weights
    with AutoAWQ and ran them with --quantization awq; asking awq of an unquantized checkpoint, or fp8 of an AWQ one,
    fails inside vLLM on the node, an hour later."""
    asked = spec.model.quantization
    qc = config.get("quantization_config")
    method = str(qc.get("quant_method") or "").lower() if isinstance(qc, dict) else ""
    if not asked:
        return
    key = ("model", "quantization")
    fam_asked, fam_ckpt = QUANT_FAMILIES.get(asked, asked), QUANT_FAMILIES.get(method, method)
    if not method and asked not in ONLINE:
        raise spec.error(
            key,
            f"quantization {asked} asks for a checkpoint quantized with {fam_asked}, but "
            f"{config_path} has no quantization_config: the weights are not quantized",
            f"{', '.join(ONLINE[:3])}... (quantized while loading), or nothing",
            "quantize the checkpoint first (README: Quantized checkpoints, AutoAWQ), point at the quantized "
            "folder, or drop --quantization / model.quantization",
        )
    if method and asked in ONLINE:
        raise spec.error(
            key,
            f"quantization {asked} quantizes while loading, but {config_path} is already quantized ({method})",
            f"{method} or nothing (vLLM reads the checkpoint's own method)",
            "drop --quantization, or set it to the checkpoint's method",
        )
    if method and fam_asked != fam_ckpt:
        raise spec.error(
            key,
            f"quantization {asked}, but {config_path} says the checkpoint is quantized with {method}",
            f"{method} (or nothing: vLLM reads it from config.json)",
            f"set quantization: {method}, or leave it unset",
        )


def check_layout(spec: JobSpec, shape: ModelShape, nodes: int = 1) -> None:
    """The TP size asked for must split the heads, and fit the GPUs the task asks Slurm for."""
    from launcher.plan.layout import tp_splits_heads

    tp = spec.model.tensor_parallel_size
    backend = registry.named(spec.model.backend)
    if (backend is not None and not backend.capabilities.tensor_parallel) or tp == "auto" or nodes > 1:
        # such a backend (hf) runs TP=1 replicas; auto only ever picks a TP that splits the heads; over several
        # nodes TP may span them (check_nodes checks that layout)
        return
    key = ("model", "tensor_parallel_size")
    gpus = spec.slurm.gpus_per_node if spec.executor == "slurm" else None  # local: whatever the machine has
    valid = [t for t in range(1, 17) if tp_splits_heads(shape, t)]
    heads = f"{shape.heads} attention heads / {shape.kv_heads} KV heads"
    gpus_at = spec.where("slurm", "gpus_per_node")
    if isinstance(tp, int):
        if not tp_splits_heads(shape, tp):
            raise spec.error(
                key,
                f"tensor_parallel_size {tp} does not split the model's {heads} evenly",
                f"a TP size that divides them: {', '.join(map(str, valid))}",
                "use one of those, or tensor_parallel_size: auto",
            )
        if gpus is not None and tp > gpus:
            raise spec.error(
                key,
                f"tensor_parallel_size {tp} needs {tp} GPUs, but each task asks Slurm for "
                f"{gpus} (slurm.gpus_per_node, {gpus_at})",
                f"at most slurm.gpus_per_node ({gpus})",
                f"set slurm.gpus_per_node: {tp} (or more), or tensor_parallel_size: auto",
            )
    elif tp == "all" and gpus and not tp_splits_heads(shape, gpus):
        raise spec.error(
            key,
            f"tensor_parallel_size: all means TP={gpus} (slurm.gpus_per_node, {gpus_at}), "
            f"which does not split the model's {heads}",
            f"gpus_per_node in {valid}",
            f"set slurm.gpus_per_node to one of {valid}, or tensor_parallel_size: auto (TP that splits "
            "the heads, the other GPUs as data-parallel replicas)",
        )


def check_context(spec: JobSpec, model_dir: Path) -> None:
    """max_model_len and max_tokens against the model's own context length (what the runner also enforces)."""
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    config = config.get("text_config", config) if "max_position_embeddings" not in config else config
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    scaled = isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (None, "default")
    asked = spec.model.max_model_len
    backend = registry.named(spec.model.backend)
    strict = backend is None or backend.capabilities.context_within_positions
    if asked is not None and asked > positions and not scaled and strict:
        raise spec.error(
            ("model", "max_model_len"),
            f"max_model_len {asked} is longer than the model's context "
            f"({positions} positions, config.json max_position_embeddings); vLLM refuses to start",
            f"at most {positions}",
            f"set model.max_model_len: {positions} or less, or leave it unset",
        )
    limit = min(asked or positions, positions)
    if spec.sampling.max_tokens >= limit:
        raise spec.error(
            ("sampling", "max_tokens"),
            f"max_tokens {spec.sampling.max_tokens} leaves no room for a "
            f"prompt in the model's context of {limit} tokens: every record would be quarantined",
            f"less than {limit}",
            "lower sampling.max_tokens",
        )


def check_adapters(spec: JobSpec) -> None:
    """Each LoRA adapter is a peft LoRA folder with weights; vLLM itself checks its modules against the model."""
    from launcher.inputs.adapters import AdapterError, read_adapter

    for name, folder in spec.model.adapters.items():
        if folder is None:
            continue
        try:
            read_adapter(folder)
        except AdapterError as exc:
            raise spec.error(
                ("model", "adapters", name), exc.message, "a folder peft's save_pretrained wrote", exc.fix
            ) from None


def check_nodes(spec: JobSpec, shape: ModelShape, nodes: int) -> None:
    """Over several nodes: the layout the job will pick (TP per node x one stage per node) must split the model."""
    from launcher.plan.layout import GpuSet, choose_multinode_layout

    if nodes == 1:
        return
    gpus = GpuSet(tuple(str(i) for i in range(spec.slurm.gpus_per_node)), "slurm.gpus_per_node")
    try:
        choose_multinode_layout(shape, gpus, nodes, spec.model.tensor_parallel_size)
    except SpecError as exc:
        p = exc.problems[0]
        raise spec.error(("slurm", "nodes"), p.message, f"a layout over {nodes} nodes", p.fix) from None
