"""spec/cost.py: what a GPU-hour costs, to turn a run's GPU-hours into cost per 1,000 samples (summary, status,
bench). Usually set once in the cluster profile; never changes the samples, so never part of the fingerprint."""

from __future__ import annotations

from pydantic import Field

from launcher.spec.common import _Section


class CostSpec(_Section):
    """What a GPU-hour costs: turns a run's GPU-hours into cost per 1,000 samples. Never changes the samples."""

    gpu_hour: float | None = Field(default=None, gt=0, le=1000)
    """Price of one GPU-hour (e.g. 2.5 for an on-demand H100 in the cloud, or your centre's internal rate).
    Unset: no cost figures, only GPU-hours."""
    currency: str = Field(default="USD", pattern=r"^[A-Za-z$€£¥]{1,8}$")
    """Shown beside the cost: USD, EUR, CHF, credits, ..."""
