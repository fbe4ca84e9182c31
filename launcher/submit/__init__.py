"""submit: the login side after planning. executors.py (the plan -> a submitit array of worker jobs + a gather job,
run.json), lock.py (one submit of a run at a time), fit.py (a job no node can hold is refused), status.py and
wait.py (following a run), provenance.py (what run.json records about where and how it ran)."""

from launcher.submit.executors import Submission, submit

__all__ = ["Submission", "submit"]
