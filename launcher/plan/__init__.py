"""plan/__init__.py: JobSpec -> Plan, on the login node, before anything is submitted, so that every check and every
unit is decided where a mistake costs nothing.

units.py (the units of work, how many worker jobs) <- preflight.py (every input checked) ; layout.py (GPUs -> TP x DP)
is what each job decides on its node (a backend's own settings are its own: engines/<name>/); persist.py keeps a plan in
its run directory and resolves which run a submit goes to; estimate.py guesses wall time from earlier runs; view.py
is what `launcher plan` prints.
"""

from launcher.plan.units import Cell, Plan, Unit, check_inputs, count_jobs, cut_units, expand

__all__ = ["Cell", "Plan", "Unit", "check_inputs", "count_jobs", "cut_units", "expand"]
