"""plan/layout.py: the GPUs a task was given + the model's shape -> ParallelLayout (TP x DP) and why, decided in one
place so that plan's preview and the job agree.

Count GPUs, never trust their numbering: a second job on a node sees CUDA_VISIBLE_DEVICES=2,3 (task/none) or
0,1 with SLURM_JOB_GPUS=2,3 (cgroups). What matters is how many, and the ids to hand to each replica.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from launcher.errors import SpecError
from launcher.inputs.model import ModelShape
from launcher.slurm_env import parse_gpu_ids

GiB = 1024**3
# Per-GPU memory kept for activations, the sampler and CUDA graphs (measured on vLLM 0.26: ~2-4 GiB for 8B).
RUNTIME_RESERVE_BYTES = 4 * GiB
# A layout must leave the KV cache at least this share of a GPU's budget, or batches get too small to be fast.
MIN_KV_SHARE = 0.2


@dataclass(frozen=True)
class GpuSet:
    ids: tuple[str, ...]  # as the job sees them, to give each replica its own CUDA_VISIBLE_DEVICES
    source: str  # which variable told us

    @property
    def count(self) -> int:
        return len(self.ids)


def allocated_gpus(env: Mapping[str, str] | None = None) -> GpuSet:
    """CUDA_VISIBLE_DEVICES first: Slurm sets it to what this job may use, and CUDA numbers from it.
    Then Slurm's own lists, then the bare count (ids 0..n-1 are then the best guess)."""
    env = os.environ if env is None else env
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = env.get(var)
        if value is not None:
            ids = parse_gpu_ids(value)  # the container shim's parser: "0-3", "0,2-3", UUIDs, NoDevFiles
            if var != "CUDA_VISIBLE_DEVICES" and "CUDA_VISIBLE_DEVICES" not in env:
                ids = tuple(str(i) for i in range(len(ids)))  # CUDA numbers what it sees from 0
            return GpuSet(ids, var)
    count = env.get("SLURM_GPUS_ON_NODE")
    if count and count.isdigit():
        return GpuSet(tuple(str(i) for i in range(int(count))), "SLURM_GPUS_ON_NODE")
    return GpuSet(tuple(str(i) for i in range(_nvidia_smi_count())), "nvidia-smi")


def _nvidia_smi(query: str) -> str | None:
    """`nvidia-smi --query-gpu=QUERY` (CSV, no header, no units): no CUDA context in this process. None: no answer."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None


def _nvidia_smi_count() -> int:
    out = _nvidia_smi("index") or ""
    return len([line for line in out.splitlines() if line.strip()])


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_bytes: int


@functools.lru_cache(maxsize=1)
def gpu_info() -> GpuInfo | None:
    """Name and memory of the first visible GPU (nvidia-smi: no CUDA context in this process). Asked once per
    process: nvidia-smi takes up to seconds on a node without persistence mode, and the GPUs do not change."""
    out = _nvidia_smi("name,memory.total")
    if out is None:
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in first:
        return None
    name, mib = first.rsplit(",", 1)
    return GpuInfo(name.strip(), int(float(mib)) * 1024 * 1024)


@dataclass(frozen=True)
class ParallelLayout:
    tensor_parallel: int
    data_parallel: int
    gpus: tuple[str, ...]
    reason: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    pipeline_parallel: int = 1  # stages; > 1 only over several nodes (one stage per node)
    nnodes: int = 1  # nodes one engine spans (vLLM's multi-node launch: engines/multinode.py)

    def replica_gpus(self, replica: int) -> tuple[str, ...]:
        return self.gpus[replica * self.tensor_parallel : (replica + 1) * self.tensor_parallel]

    def as_dict(self) -> dict[str, object]:
        return {
            "tensor_parallel_size": self.tensor_parallel,
            "data_parallel_size": self.data_parallel,
            "gpus": list(self.gpus),
            "reason": self.reason,
            "notes": list(self.notes),
            **({"pipeline_parallel_size": self.pipeline_parallel} if self.pipeline_parallel > 1 else {}),
            **({"nnodes": self.nnodes} if self.nnodes > 1 else {}),
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, object]) -> ParallelLayout:
        gpus = obj.get("gpus") or []
        notes = obj.get("notes") or []
        return cls(
            int(str(obj["tensor_parallel_size"])),
            int(str(obj["data_parallel_size"])),
            tuple(str(g) for g in gpus) if isinstance(gpus, list) else (),
            str(obj.get("reason", "")),
            tuple(str(n) for n in notes) if isinstance(notes, list) else (),
            int(str(obj.get("pipeline_parallel_size", 1))),
            int(str(obj.get("nnodes", 1))),
        )

    def for_replica(self, replica: int) -> ParallelLayout:
        """One worker's share: its TP group, as that worker's process sees it (CUDA numbers its GPUs from 0)."""
        group = self.replica_gpus(replica)
        return ParallelLayout(
            self.tensor_parallel,
            1,
            tuple(str(i) for i in range(len(group))),
            self.reason,
            self.notes,
            self.pipeline_parallel,
            self.nnodes,
        )


def tp_splits_heads(shape: ModelShape, tp: int) -> bool:
    """vLLM shards attention heads over TP: heads must divide; KV heads divide or are replicated."""
    return shape.heads % tp == 0 and (shape.kv_heads % tp == 0 or tp % shape.kv_heads == 0)


def fits(shape: ModelShape, tp: int, gpu_bytes: int, utilization: float, weight_bytes: int) -> bool:
    budget = gpu_bytes * utilization
    per_gpu = weight_bytes / tp + RUNTIME_RESERVE_BYTES
    return per_gpu <= budget * (1 - MIN_KV_SHARE)


def choose_layout(
    shape: ModelShape,
    gpus: GpuSet,
    gpu: GpuInfo | None,
    utilization: float,
    requested: str | int,
    weight_bytes: int | None = None,
) -> ParallelLayout:
    """Smallest TP that fits the weights and splits the heads; the other GPUs become data-parallel replicas."""
    n = gpus.count
    weights = weight_bytes if weight_bytes is not None else shape.weight_bytes
    if n == 0:
        notes = (
            (f"tensor_parallel_size {requested} asked, but there is no GPU here: one engine on the CPU",)
            if requested not in ("auto", 1)
            else ()
        )
        return ParallelLayout(1, 1, (), "no GPU allocated: one engine on the CPU", notes)
    if requested == "all":
        if not tp_splits_heads(shape, n):
            raise _refuse(
                f"tensor_parallel_size: all means TP={n}, which does not split {shape.heads} attention heads"
                f" /"
                f" {shape.kv_heads} KV heads",
                fix=f"ask for {_divisor_hint(shape, n)} GPUs, or use auto",
            )
        return ParallelLayout(n, 1, gpus.ids, f"tensor_parallel_size: all -> TP={n} over every GPU of the task")
    if isinstance(requested, int):
        if requested > n:
            # The size is a speed choice; the memory check below still holds. Plan refuses it for a Slurm job that
            # asks fewer GPUs (model_checks.check_layout); here the machine simply has fewer: say so, and go on.
            chosen = choose_layout(shape, gpus, gpu, utilization, "auto", weight_bytes)
            note = (
                f"tensor_parallel_size {requested} asked, but only {n} GPU(s) here ({gpus.source}): "
                f"TP={chosen.tensor_parallel} x DP={chosen.data_parallel} instead"
            )
            return ParallelLayout(
                chosen.tensor_parallel,
                chosen.data_parallel,
                chosen.gpus,
                f"{note}; {chosen.reason}",
                (note, *chosen.notes),
            )
        if not tp_splits_heads(shape, requested):
            raise _refuse(
                f"tensor_parallel_size {requested} does not split {shape.heads} attention heads / "
                f"{shape.kv_heads} KV heads evenly",
                fix=f"use one of {_valid_tps(shape, n) or [1]}, or auto",
            )
        dp = n // requested
        idle = n - dp * requested
        notes = (f"{idle} GPU(s) left idle: {n} is not a multiple of TP={requested}",) if idle else ()
        return ParallelLayout(
            requested,
            dp,
            gpus.ids[: dp * requested],
            f"tensor_parallel_size {requested} set in the spec -> DP={dp}",
            notes,
        )
    mem = gpu.memory_bytes if gpu else None
    for tp in _valid_tps(shape, n):
        if mem is None or fits(shape, tp, mem, utilization, weights):
            dp = n // tp
            why_mem = (
                (
                    f"{weights / GiB:.1f} GiB of weights / TP={tp} fit {gpu.name if gpu else 'the GPU'} "
                    f"({mem / GiB:.0f} GiB x {utilization}) with room for the KV cache"
                )
                if mem
                else "GPU memory unknown"
            )
            notes = (f"{n - dp * tp} GPU(s) left idle",) if n % tp else ()
            return ParallelLayout(
                tp,
                dp,
                gpus.ids[: dp * tp],
                f"auto: smallest TP that fits and splits the heads is {tp} ({why_mem}); "
                f"{n} GPU(s) -> {dp} data-parallel replica(s)",
                notes,
            )
    need = weights / ((mem or 1) * utilization * (1 - MIN_KV_SHARE) - RUNTIME_RESERVE_BYTES)
    raise _refuse(
        f"the model ({weights / GiB:.0f} GiB of weights) does not fit {n} GPU(s) of "
        f"{(mem or 0) / GiB:.0f} GiB at gpu_memory_utilization {utilization}",
        fix=f"ask for at least {max(2, int(need) + 1)} GPUs per task, use quantization (fp8 halves bf16), "
        "or raise model.gpu_memory_utilization",
    )


def choose_multinode_layout(shape: ModelShape, gpus: GpuSet, nnodes: int, requested: str | int) -> ParallelLayout:
    """One engine over `nnodes` nodes of `gpus.count` GPUs each (no data parallelism: the array does that).

    auto: TP over a node's GPUs (NVLink), one pipeline stage per node: only activations cross the interconnect, once
    per stage and token, where TP across nodes would all-reduce twice per layer. all: TP over every GPU of every node.
    An int: that TP, and the pipeline stages that fill the nodes. On CPU (no GPU): TP over the nodes."""
    per_node = gpus.count
    total = max(1, per_node) * nnodes
    if per_node == 0:
        tp, pp, why = nnodes, 1, f"no GPU: TP={nnodes}, one CPU rank per node"
    elif requested == "all":
        tp, pp, why = total, 1, f"tensor_parallel_size: all -> TP={total} over {nnodes} nodes x {per_node} GPU(s)"
    elif isinstance(requested, int):
        if total % requested:
            raise _refuse(
                f"tensor_parallel_size {requested} does not divide the {total} GPUs of {nnodes} nodes",
                fix=f"use a divisor of {total}, or auto (TP={per_node} per node, {nnodes} pipeline stages)",
            )
        tp, pp = requested, total // requested
        why = f"tensor_parallel_size {requested} set in the spec -> {pp} pipeline stage(s) over {nnodes} nodes"
    else:
        tp, pp = per_node, nnodes
        why = (
            f"auto over {nnodes} nodes: TP={per_node} inside each node (NVLink), PP={nnodes} across nodes (only "
            "activations cross the interconnect)"
        )
    if not tp_splits_heads(shape, tp):
        raise _refuse(
            f"TP={tp} over {nnodes} nodes does not split {shape.heads} attention heads / {shape.kv_heads} KV heads",
            fix=f"use one of {_valid_tps(shape, total) or [1]} as tensor_parallel_size",
        )
    if pp > 1 and shape.layers and shape.layers < pp:
        raise _refuse(f"{pp} pipeline stages for {shape.layers} layers", fix="use fewer nodes, or a larger TP")
    return ParallelLayout(tp, 1, gpus.ids, why, (), pp, nnodes)


def _valid_tps(shape: ModelShape, n: int) -> list[int]:
    return [tp for tp in range(1, n + 1) if n % tp == 0 and tp_splits_heads(shape, tp)]


def _divisor_hint(shape: ModelShape, n: int) -> str:
    ok = [tp for tp in (1, 2, 4, 8, 16) if tp_splits_heads(shape, tp)]
    return " or ".join(map(str, ok[:4])) or "1"


def _refuse(message: str, fix: str = "use tensor_parallel_size: auto") -> SpecError:
    return SpecError.one("<spec>", "model.tensor_parallel_size", message, fix=fix)
