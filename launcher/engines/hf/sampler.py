"""engines/hf/sampler.py: SeededSampler, the HF backend's own sampling, one torch.Generator per (record, sample).

transformers draws all rows of a batch from one global RNG, so a record's samples would depend on what it was
batched with. SeededSampler samples itself, each row from its own generator seeded with that sample's seed
(seeds.py sample_seed: vLLM's convention), and hands generate() a one-hot choice: batching no longer matters.
"""

from __future__ import annotations

from typing import Any


class SeededSampler:
    """A LogitsProcessor: temperature, top-k, then top-p (vLLM's order), then an inverse-CDF draw per row."""

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float, block_ids: list[int]) -> None:
        import torch

        self.torch = torch
        self.generators = [torch.Generator().manual_seed(s % (2**63)) for s in seeds]
        self.temperature, self.top_k, self.top_p, self.block_ids = temperature, top_k, top_p, block_ids

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        logits = scores.float()
        if self.block_ids:
            logits[:, self.block_ids] = float("-inf")
        chosen = logits.argmax(dim=-1) if self.temperature == 0 else self._sample(logits / self.temperature)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(out.shape[0]), chosen] = 0.0
        return out

    def _sample(self, logits: Any) -> Any:
        torch = self.torch
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float64)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) > self.top_p  # keeps at least the top token
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = (probs / probs.sum(-1, keepdim=True)).cpu()
        cdf = probs.cumsum(-1)
        picks = []
        for row, gen in enumerate(self.generators):
            u = torch.rand((), generator=gen, dtype=torch.float64) * cdf[row, -1]
            picks.append(min(int(torch.searchsorted(cdf[row], u, right=True)), probs.shape[-1] - 1))
        return torch.tensor(picks, device=logits.device)


__all__ = ["SeededSampler"]
