"""cli/legacy.py: the flags of the old inference_vllm.py -> a JobSpec, so that migrated command lines work unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.spec import JobSpec
from launcher.spec.load import Layers, load_layers
from launcher.spec.validate import validate

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
    "prompt_preamble": ("data", "preamble"),
    "output_dir": ("output", "dir"),
}
DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".gz")


def add_legacy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference_vllm.py flags (accepted as they were)")
    g.add_argument(
        "--checkpoint_dir", help="model folder (HF format), e.g. outputs/Chameleons_8B_context_sampled_seed42"
    )
    g.add_argument(
        "--dataset",
        help="dataset name (Chameleons, DMSC, ...: found in the catalog, see --scenario_path) or a dataset file",
    )
    g.add_argument(
        "--scenario_path",
        help="the dataset's records (JSONL/Parquet/CSV or a saved HF dataset); "
        "unset: found from --dataset's name in launcher.yaml's `datasets:` "
        "catalog, $LAUNCHER_CATALOG, --profile, or under $LAUNCHER_DATA_ROOT",
    )
    g.add_argument("--ablation_config", default=None, help="e.g. profile_and_context (default: full)")
    g.add_argument("--output_dir", help="where <user>.json and inference_summary.json go")
    g.add_argument(
        "--tensor_parallel_size",
        type=_tp,
        default=None,
        help="int, auto or all (default auto); more than this machine has: said, and auto runs",
    )
    g.add_argument("--gpu_memory_utilization", type=float)
    g.add_argument("--max_model_len", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top_p", type=float)
    g.add_argument("--top_k", type=int)
    g.add_argument("--max_tokens", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--num_samples", type=int)
    g.add_argument("--quantization", help="awq, gptq, fp8, ... (vLLM's names); must match the checkpoint's own")
    g.add_argument("--prompt_preamble", help="a text file every prompt starts with (new; not in the old script)")
    g.add_argument("--profile", help="a cluster profile to start from (its catalog, data_root, engine settings)")


def _tp(text: str) -> int | str:
    return text if text in {"auto", "all"} else int(text)


def uses_legacy(ns: argparse.Namespace) -> bool:
    return any(getattr(ns, f, None) is not None for f in [*FLAGS, "dataset", "ablation_config", "scenario_path"])


def _looks_like_path(text: str) -> bool:
    return Path(text).exists() or "/" in text or text.endswith(DATA_SUFFIXES)


def _slug(text: str) -> str:
    return ("".join(c if c.isalnum() or c in "_.-" else "_" for c in text).lstrip("._-") or "dataset")[:60]


def spec_from_flags(ns: argparse.Namespace, backend: str = "auto") -> JobSpec:
    missing = [f"--{f}" for f, v in (("checkpoint_dir", ns.checkpoint_dir), ("output_dir", ns.output_dir)) if v is None]
    if ns.dataset is None and ns.scenario_path is None:
        missing.append("--dataset (or --scenario_path)")
    if missing:
        raise SpecError.one(
            "launcher run",
            "",
            f"missing {', '.join(missing)}",
            fix="give --checkpoint_dir, --dataset NAME (or --scenario_path FILE) and --output_dir, or use --spec SPEC",
        )
    data: dict[str, Any] = {
        "name": "run",
        "executor": "local",
        "model": {"backend": backend},
        "data": {},
        "sampling": {},
        "output": {"per_user_json": True},
    }
    layers = load_layers(Path(ns.profile), []) if getattr(ns, "profile", None) else Layers(data={}, root="launcher run")
    origin: dict[tuple[str | int, ...], str] = {}
    for flag, (section, field) in FLAGS.items():
        value = getattr(ns, flag, None)
        if value is not None:
            data[section][field] = value
            origin[(section, field)] = f"--{flag}"
    if ns.scenario_path:  # the old meaning: the dataset's records; --dataset names them
        name = (
            _slug(ns.dataset) if ns.dataset and not _looks_like_path(ns.dataset) else _slug(Path(ns.scenario_path).stem)
        )
        data["data"]["datasets"] = [{"name": name, "path": ns.scenario_path}]
        origin[("data", "datasets")] = "--scenario_path"
    elif _looks_like_path(ns.dataset):  # a file given to --dataset keeps working
        data["data"]["datasets"] = [{"name": _slug(Path(ns.dataset).stem), "path": ns.dataset}]
        origin[("data", "datasets")] = "--dataset"
    else:  # a name: the catalog finds its records (catalog.py)
        data["data"]["datasets"] = [{"name": _slug(ns.dataset)}]
        origin[("data", "datasets")] = "--dataset"
    if ns.ablation_config:
        data["data"]["ablation_configs"] = [ns.ablation_config]
        origin[("data", "ablation_configs")] = "--ablation_config"
    layers.merge(
        data,
        where_of=lambda key: next(
            (origin[key[:n]] for n in range(len(key), 0, -1) if key[:n] in origin), "launcher run"
        ),
        base=Path.cwd(),
    )
    return validate(layers, JobSpec)


def legacy_notes(ns: argparse.Namespace) -> list[str]:
    """Old flags whose meaning is not quite what it was: said on the console, never silently."""
    notes = []
    if ns.seed is not None:
        notes.append(
            f"--seed {ns.seed}: each record's samples are seeded from (seed, record id), so they do not "
            "depend on batching or sharding, and differ from what inference_vllm.py gave with the same seed"
        )
    if isinstance(ns.tensor_parallel_size, int):
        notes.append(
            f"--tensor_parallel_size {ns.tensor_parallel_size}: a preference; with more GPUs than that, the "
            "rest run data-parallel workers (auto would choose TP=1 for a model that fits one GPU)"
        )
    return notes
