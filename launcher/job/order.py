"""job/order.py: a worker's units -> the order it claims them in and feeds their rows (scheduling.prefix_order).

Plan order: unit after unit, each unit's rows longest prompt first. Prefix order: the units of one shard of users
under the configs that share a prefix (a group of plan/prefix.py: same model, adapter, dataset and rows) are
claimed together, and one user's prompts of those configs go to the engine one after another, in the group's
order, so each finds the prefix the one before it left in vLLM's cache instead of computing it again.

Claims stay one unit at a time (store/claims.py, unchanged): a group member that another worker holds, or that is
done, is simply not in this worker's group; it stays a candidate of its own for whoever gets to it. Outputs do not
depend on the order: each record keeps its seed, each unit its chunks, and gather sorts rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from launcher.job.prepare import PreparedUnit
from launcher.plan import Unit
from launcher.plan.prefix import PrefixDecision, PromptSource, analyse, decide, no_prefix_cache, sample_prompt_ids
from launcher.spec import JobSpec

log = logging.getLogger("launcher.job")

GroupKey = tuple[str, str, str, int, int, int]  # model, adapter, dataset, start, stop, group number


@dataclass(frozen=True)
class FeedOrder:
    decision: PrefixDecision

    @property
    def active(self) -> bool:
        return self.decision.active

    def _place(self, unit: Unit) -> tuple[GroupKey, int] | None:
        """(its group's key, its position in the group's feed order), or None when it runs alone."""
        analysis = self.decision.analysis
        if not self.active or analysis is None:
            return None
        for number, group in enumerate(analysis.groups):
            if group.dataset == unit.dataset and unit.ablation in group.ablations:
                key = (unit.model, unit.adapter, unit.dataset, unit.start, unit.stop, number)
                return key, group.ablations.index(unit.ablation)
        return None

    def candidates(self, units: Sequence[Unit]) -> list[Unit]:
        """Plan order; in prefix order each group's members follow one another where its first member stood."""
        if not self.active:
            return list(units)
        members: dict[GroupKey, list[tuple[int, Unit]]] = {}
        for u in units:
            place = self._place(u)
            if place is not None:
                members.setdefault(place[0], []).append((place[1], u))
        out: list[Unit] = []
        emitted: set[GroupKey] = set()
        for u in units:
            place = self._place(u)
            if place is None:
                out.append(u)
            elif place[0] not in emitted:
                emitted.add(place[0])
                out += [m for _, m in sorted(members[place[0]], key=lambda pm: pm[0])]
        return out

    def partners(self, unit: Unit, units: Sequence[Unit]) -> list[Unit]:
        """The other units of `unit`'s group among `units`, in feed order; none in plan order."""
        place = self._place(unit)
        if place is None:
            return []
        found = [(p[1], u) for u in units if u.unit_id != unit.unit_id and (p := self._place(u)) and p[0] == place[0]]
        return [u for _, u in sorted(found, key=lambda pu: pu[0])]

    def position(self, unit: Unit) -> int:
        """Where `unit` goes in its group's feed order (0 when it runs alone)."""
        place = self._place(unit)
        return place[1] if place is not None else 0


def interleave(group: Sequence[PreparedUnit]) -> Iterator[tuple[int, int]]:
    """(member index, row) for every row still to do: one unit alone in its own order (longest prompt first); a group
    user by user (the longest prompts first), each user's prompts in the group's order."""
    if len(group) == 1:
        yield from ((0, row) for row in group[0].todo())
        return
    todo = [set(p.token_ids) for p in group]
    rows = sorted(set().union(*todo), key=lambda r: (-max(len(p.token_ids.get(r, ())) for p in group), r))
    for row in rows:
        for i in range(len(group)):
            if row in todo[i]:
                yield i, row


def feed_order(spec: JobSpec, source: PromptSource, rows_per_dataset: Mapping[str, int] | None = None) -> FeedOrder:
    """Measure the first rows (unless prefix_order is off) and decide. A failure to measure is no reason to stop a
    worker: it then runs in plan order and says why."""
    mode = spec.scheduling.prefix_order
    if mode == "off" or (mode == "auto" and no_prefix_cache(spec)):  # decided without reading a row
        return FeedOrder(decide(spec, None))
    try:
        analysis = analyse(spec, sample_prompt_ids(spec, source), rows_per_dataset)
    except Exception as exc:  # a dataset unreadable here fails its units with their own error, later
        log.warning("prefix order: could not measure shared prefixes (%s: %s); plan order", type(exc).__name__, exc)
        return FeedOrder(PrefixDecision(mode, False, f"could not measure shared prefixes: {exc}"[:500]))
    return FeedOrder(decide(spec, analysis))


__all__ = ["FeedOrder", "feed_order", "interleave"]
