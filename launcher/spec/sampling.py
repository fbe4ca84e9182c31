"""spec/sampling.py: the sampling section (vLLM's names; the old script's defaults)."""

from __future__ import annotations

from pydantic import Field

from launcher.spec.common import _Section


class SamplingSpec(_Section):
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    """0 means greedy. 1.0 is the old inference_vllm.py default, kept so migrated runs match."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to top_p."""
    top_k: int = Field(default=50, ge=-1)
    """Keep the k most likely tokens; -1 or 0 keeps all."""
    max_tokens: int = Field(default=512, ge=1, le=131_072)
    """New tokens per sample (vLLM's name)."""
    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    """Run seed. A record's samples depend only on (seed, record id), never on sharding, batching or retries."""
    ignore_eos: bool = False
    """Generate exactly max_tokens (benchmarks)."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings."""
