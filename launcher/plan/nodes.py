"""plan/nodes.py: slurm.nodes -> how many nodes one task spans, and why (`auto`: the fewest that hold the weights).

Decided at plan time, on the login node, from the checkpoint's config and what the spec says of the GPUs: the
per-GPU memory of the kind slurm.constraint names (h100, h200, a100, ...), else an 80 GiB GPU, said so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launcher.inputs.model import model_shape
from launcher.plan.layout import MIN_KV_SHARE, RUNTIME_RESERVE_BYTES, GiB
from launcher.spec import JobSpec

# Memory per GPU by the feature names clusters give them (slurm.constraint), in GiB as nvidia-smi reports them.
GPU_GIB_BY_FEATURE = {"h200": 141, "h100": 80, "a100": 80, "a100-40": 40, "l40s": 48, "l40": 48, "a40": 48, "v100": 32}
DEFAULT_GPU_GIB = 80


@dataclass(frozen=True)
class NodeChoice:
    nodes: int
    reason: str


def gpu_gib(spec: JobSpec) -> tuple[int, str]:
    constraint = (spec.slurm.constraint or "").lower()
    for feature, gib in sorted(GPU_GIB_BY_FEATURE.items(), key=lambda kv: -len(kv[0])):
        if feature in constraint:
            return gib, f"{gib} GiB per GPU ({feature}, slurm.constraint)"
    return DEFAULT_GPU_GIB, f"{DEFAULT_GPU_GIB} GiB per GPU assumed (set slurm.constraint to name the GPU kind)"


def choose_nodes(spec: JobSpec) -> NodeChoice:
    s = spec.slurm
    if s.nodes != "auto":
        why = "slurm.nodes" if s.nodes == 1 else f"slurm.nodes: one engine over {s.nodes} nodes"
        return NodeChoice(int(s.nodes), why)
    per_node = max(1, s.gpus_per_node)
    if s.gpus_per_node == 0:
        return NodeChoice(1, "auto: no GPU asked (gpus_per_node 0): one node")
    shapes = [model_shape(path) for path in spec.model_paths().values()]
    fp8 = (spec.model.quantization or "").startswith("fp8")
    weights = max(sh.weight_bytes_as(1) if fp8 else sh.weight_bytes for sh in shapes)
    gib, source = gpu_gib(spec)
    usable = gib * GiB * spec.model.gpu_memory_utilization * (1 - MIN_KV_SHARE) - RUNTIME_RESERVE_BYTES
    gpus = max(1, math.ceil(weights / usable))
    nodes = max(1, math.ceil(gpus / per_node))
    return NodeChoice(
        nodes,
        f"auto: {weights / GiB:.0f} GiB of weights need {gpus} GPU(s) at {source}, gpu_memory_utilization "
        f"{spec.model.gpu_memory_utilization} and {MIN_KV_SHARE:.0%} left for the KV cache: {nodes} node(s) of "
        f"{per_node} GPU(s)",
    )


__all__ = ["GPU_GIB_BY_FEATURE", "NodeChoice", "choose_nodes", "gpu_gib"]
