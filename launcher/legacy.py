"""legacy.py: the flags of the old inference_vllm.py -> a JobSpec, so migrated command lines work unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .spec import JobSpec
from .spec_loader import Layers
from .spec_validate import validate

# flag -> (section, field); the old script's names, kept exactly.
FLAGS: dict[str, tuple[str, str]] = {
    "checkpoint_dir": ("model", "path"),
    "tensor_parallel_size": ("model", "tensor_parallel_size"),
    "gpu_memory_utilization": ("model", "gpu_memory_utilization"),
    "max_model_len": ("model", "max_model_len"),
    "quantization": ("model", "quantization"),
    "temperature": ("sampling", "temperature"),
    "top_p": ("sampling", "top_p"),
    "top_k": ("sampling", "top_k"),
    "max_tokens": ("sampling", "max_tokens"),
    "seed": ("sampling", "seed"),
    "num_samples": ("data", "num_samples"),
    "scenario_path": ("data", "scenario"),
    "output_dir": ("output", "dir"),
}


def add_legacy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference_vllm.py flags (accepted as they were)")
    g.add_argument("--checkpoint_dir", help="model folder (HF format)")
    g.add_argument("--dataset", help="dataset file (JSONL/Parquet/CSV) or saved HF dataset folder")
    g.add_argument("--ablation_config", default=None, help="e.g. profile_and_context (default: full)")
    g.add_argument("--output_dir", help="where users/<id>.json and inference_summary.json go")
    g.add_argument("--tensor_parallel_size", type=_tp, default=None, help="int, auto or all (default auto)")
    g.add_argument("--gpu_memory_utilization", type=float)
    g.add_argument("--max_model_len", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top_p", type=float)
    g.add_argument("--top_k", type=int)
    g.add_argument("--max_tokens", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--num_samples", type=int)
    g.add_argument("--scenario_path", help="text file describing the task; prompts start with it")
    g.add_argument("--quantization", help="awq, gptq, fp8, ... (vLLM's names)")


def _tp(text: str) -> int | str:
    return text if text in {"auto", "all"} else int(text)


def uses_legacy(ns: argparse.Namespace) -> bool:
    return any(getattr(ns, f, None) is not None for f in [*FLAGS, "dataset", "ablation_config"])


def spec_from_flags(ns: argparse.Namespace, backend: str = "auto") -> JobSpec:
    data: dict[str, Any] = {"name": "run", "executor": "local", "model": {"backend": backend},
                            "data": {}, "sampling": {}, "output": {"per_user_json": True}}
    layers = Layers(data={}, root="launcher run")
    origin: dict[tuple[str | int, ...], str] = {}
    for flag, (section, field) in FLAGS.items():
        value = getattr(ns, flag, None)
        if value is not None:
            data[section][field] = value
            origin[(section, field)] = f"--{flag}"
    if ns.dataset:
        path = Path(ns.dataset)
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem) or "dataset"
        data["data"]["datasets"] = [{"name": name[:60], "path": str(path)}]
        origin[("data", "datasets")] = "--dataset"
    if ns.ablation_config:
        data["data"]["ablation_configs"] = [ns.ablation_config]
        origin[("data", "ablation_configs")] = "--ablation_config"
    missing = [f"--{f}" for f, v in (("checkpoint_dir", ns.checkpoint_dir), ("dataset", ns.dataset),
                                     ("output_dir", ns.output_dir)) if v is None]
    if missing:
        from .errors import SpecError

        raise SpecError.one("launcher run", "", f"missing {', '.join(missing)}",
                            fix="give --checkpoint_dir, --dataset and --output_dir, or use --spec SPEC --task N")
    layers.merge(data, where_of=lambda key: next((origin[key[:n]] for n in range(len(key), 0, -1) if key[:n] in origin),
                                                 "launcher run"), base=Path.cwd())
    return validate(layers, JobSpec)
