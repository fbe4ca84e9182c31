"""gather: unit chunks -> <output dir>/<dataset>/<ablation>/, verified, with the run's wall-clock figures.

merge.py (verify and write) <- throughput.py (the workers' reports -> figures by the wall clock); compare.py compares
two gathered outputs record by record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.gather.merge import GatherError, GroupReport, gather


def __getattr__(name: str) -> Any:
    # On first use: `launcher status` imports gather.throughput alone (it answers in well under 2 s).
    if name in ("GatherError", "GroupReport", "gather"):
        from launcher.gather import merge

        return getattr(merge, name)
    raise AttributeError(f"module 'launcher.gather' has no attribute {name!r}")


__all__ = ["GatherError", "GroupReport", "gather"]
