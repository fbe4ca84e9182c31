"""job/prompt_stats.py: a run's units -> their prompt statistics (unit id -> [records, total prompt tokens, longest
prompt]), which refine each engine's admission once it is up (job/worker.py; the engine starts from a bound).

The whole run's are measured once, by the worker that wins a claim on `prompt_stats.claims/` (store/claims.py, with
its takeover rules, reached through the checked run folder as a unit's claims are), span by span over each dataset
file (job/prepare.py: Preparer.stats_of), and kept in `prompt_stats.json`: 256 workers starting together used to
tokenize the whole run each. The others do not wait for it: they get what the file holds so far (maybe nothing),
size their engine from their first group, and refine again once the file is there (Worker._refine_from_run_stats).
"""

from __future__ import annotations

import logging
from functools import partial

from launcher.engines.base import Workload
from launcher.job.prepare import Preparer
from launcher.plan import Plan, Unit
from launcher.spec import JobSpec
from launcher.store import Owner, RunDir

log = logging.getLogger("launcher.job")


def prompt_stats(plan: Plan, preparer: Preparer, units: list[Unit] | None = None) -> dict[str, list[float]]:
    """For every unit of the run (units=None: measured by one worker, see the module docstring; a worker that does
    not win the measurer's claim gets what is measured so far) or for `units` (measured here, not kept: another
    model's tokenizer counts its own units)."""
    run: RunDir = plan.run
    wanted = units if units is not None else list(plan.units)
    stats = cached_stats(run)
    missing = [u for u in wanted if u.unit_id not in stats]
    if not missing:
        return stats
    if units is not None:
        stats.update(preparer.stats_of(missing)[0])
        return stats
    book = run.prompt_stats_book()  # checked as a unit's claims: through the run folder, never a link
    claim = book.try_claim(Owner.me("prompt-stats"))
    if claim is None:  # another worker measures them: no waiting (the engine refines when they are in)
        return stats
    try:
        stats = cached_stats(run)  # the previous measurer may have finished just before we won
        missing = [u for u in wanted if u.unit_id not in stats]
        if missing:
            measured, refused = preparer.stats_of(missing, tick=partial(book.heartbeat, claim))
            stats.update(measured)
            if not refused:  # a unit refused counts as empty here: not kept, the next worker measures again
                run.write_json(run.prompt_stats, {"units": stats})
    finally:
        book.release(claim)
    return stats


def cached_stats(run: RunDir) -> dict[str, list[float]]:
    """What prompt_stats.json holds; a damaged entry is left out (measured again), never trusted or fatal."""
    cached = run.read_json(run.prompt_stats).get("units")
    stats: dict[str, list[float]] = {}
    for k, v in (cached if isinstance(cached, dict) else {}).items():
        if isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v):
            stats[str(k)] = [float(x) for x in v]
        else:
            log.warning("%s: unit %r holds %r, not [records, tokens, longest]; measured again", run.prompt_stats, k, v)
    return stats


def workload_of(
    stats: dict[str, list[float]], units: list[Unit], spec: JobSpec, token_limit: int | None = None
) -> Workload:
    rows = [stats[u.unit_id] for u in units if u.unit_id in stats]
    records = int(sum(r[0] for r in rows))
    total = sum(r[1] for r in rows)
    longest = int(max((r[2] for r in rows), default=0))
    return Workload(
        records,
        total / records if records else 0.0,
        longest,
        spec.sampling.max_tokens,
        spec.data.num_samples,
        token_limit=token_limit,
    )


__all__ = ["cached_stats", "prompt_stats", "workload_of"]
