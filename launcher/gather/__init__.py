"""gather: unit chunks -> <output dir>/<dataset>/<ablation>/, verified, with the run's wall-clock figures.

merge.py (verify and write) <- throughput.py (the workers' reports -> figures by the wall clock); compare.py compares
two gathered outputs record by record.
"""

from launcher.gather.merge import GatherError, GroupReport, gather

__all__ = ["GatherError", "GroupReport", "gather"]
