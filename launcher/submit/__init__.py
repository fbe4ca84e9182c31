"""submit/__init__.py: the login side after planning, so that everything that talks to Slurm (or starts local jobs) is
in one package. front_door.py (a spec -> a checked plan, for every command), executors.py (the plan -> a submitit array
of worker jobs + a gather job, run.json), lock.py (one submit of a run at a time), fit.py (a job no node can hold is
refused), status.py and wait.py (following a run), provenance.py (what run.json records about where and how it ran)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.submit.executors import Submission, submit


def __getattr__(name: str) -> Any:
    # On first use, not at import: `launcher status` reads this package's light modules and must not pay for
    # submitit and the job side (~0.5 s of CPU) that executors.py imports.
    if name in ("Submission", "submit"):
        from launcher.submit import executors

        return getattr(executors, name)
    raise AttributeError(f"module 'launcher.submit' has no attribute {name!r}")


__all__ = ["Submission", "submit"]
