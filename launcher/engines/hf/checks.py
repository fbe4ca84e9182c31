"""engines/hf/checks.py: what a spec may not ask of the HF backend (checked when it names backend: hf, before anything
is submitted), and the warnings a worker reports when it runs HF on a GPU. Wording of its own: the registry's generic
capability checks (engines/registry.py check_capabilities) would say less about why and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.plan.layout import ParallelLayout
    from launcher.spec import JobSpec


def check_spec(spec: JobSpec) -> None:
    """LoRA adapters, tensor parallelism, several nodes and structured outputs are vLLM's: refuse them, naming the
    field (exit 2)."""
    from launcher.spec.common import _FieldError

    if spec.model.adapters:
        raise _FieldError(
            ("model", "adapters"),
            "LoRA adapters with backend hf: the HF backend serves the base model only",
            "backend vllm or auto (vLLM serves every adapter from one engine)",
            "use model.backend: vllm, or merge the adapter into a checkpoint and list it under models:",
        )
    tp = spec.model.tensor_parallel_size
    if isinstance(tp, int) and tp > 1:
        raise _FieldError(
            ("model", "tensor_parallel_size"),
            f"tensor_parallel_size {tp} with backend hf: the HF "
            "backend runs one engine per GPU (data-parallel), never tensor-parallel",
            "auto or 1 with backend hf",
            "use model.backend: vllm, or tensor_parallel_size: auto",
        )
    if spec.slurm.nodes != 1:
        raise _FieldError(
            ("slurm", "nodes"),
            f"slurm.nodes {spec.slurm.nodes} with backend hf: one engine over several nodes is vLLM's multi-node "
            "launch, in a Slurm step",
            "nodes: 1, or nodes > 1 / auto with backend vllm (or auto) and executor slurm",
            "use model.backend: vllm and executor: slurm, or slurm.nodes: 1",
        )
    if spec.sampling.structured is not None:
        raise _FieldError(
            ("sampling", "structured"),
            f"structured outputs ({spec.sampling.structured.kind}) with backend hf: transformers' generate() "
            "has no constrained decoding of its own",
            "backend vllm or auto (vLLM's structured outputs: xgrammar / guidance)",
            "use model.backend: vllm, or drop sampling.structured and validate the samples afterwards",
        )


def worker_warnings(spec: JobSpec, layout: ParallelLayout, why: str) -> list[str]:
    """HF on a GPU is many times slower than vLLM, and uses one GPU of a TP group."""
    if not layout.gpus:
        return []
    warnings = [
        f"running HF transformers on the GPU, many times slower than vLLM ({why})"
        if spec.model.backend == "auto"
        else f"backend hf set in the spec ({why})"
    ]
    if layout.tensor_parallel > 1:
        warnings.append(
            f"HF uses one GPU per worker: {layout.tensor_parallel - 1} GPU(s) of this worker's group stay idle"
        )
    return warnings


__all__ = ["check_spec", "worker_warnings"]
