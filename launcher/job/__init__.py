"""job/__init__.py: the node side, so that what runs on a GPU node is apart from the login side's submit. A job (array
element) counts its GPUs and starts one worker per GPU group; each worker starts one engine and claims units of work
from the run directory until none is left.

entry.py (job -> workers) -> worker.py (the engine's life) -> unit_claims.py (claim, prepare) + feed.py (requests
out, completions in) -> prepare.py (unit -> token ids) + writer.py (chunks); live_report.py: each worker's report.
retries.py: failed attempts and requeues.
"""
