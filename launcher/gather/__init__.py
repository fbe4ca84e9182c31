"""gather/__init__.py: unit chunks -> <output dir>/<dataset>/<ablation>/, verified, with the run's wall-clock figures.

merge.py (verify and write) <- throughput.py (the workers' reports -> figures by the wall clock); compare.py compares
two gathered outputs record by record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launcher.errors import GatherError  # raised by merge.py; a leaf import, light as the rest of errors.py

if TYPE_CHECKING:
    from launcher.gather.merge import GroupReport, gather


def __getattr__(name: str) -> Any:
    # On first use: `launcher status` imports gather.throughput alone (it answers in well under 2 s).
    if name in ("GroupReport", "gather"):
        from launcher.gather import merge

        return getattr(merge, name)
    raise AttributeError(f"module 'launcher.gather' has no attribute {name!r}")


__all__ = ["GatherError", "GroupReport", "gather"]
