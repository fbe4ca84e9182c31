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
from dataclasses import dataclass, field

from launcher.job.prepare import PreparedUnit
from launcher.plan import Unit
from launcher.plan.prefix import PrefixDecision, PromptSource, analyse, decide, no_prefix_cache, sample_prompt_ids
from launcher.spec import JobSpec

log = logging.getLogger("launcher.job")

GroupKey = tuple[str, str, str, int, int, int]  # model, adapter, dataset, start, stop, group number


@dataclass(frozen=True)
class FeedOrder:
    decision: PrefixDecision
    # (dataset, ablation) -> (group number, position in its feed order): a worker asks for every unit at each claim
    _groups: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict, init=False, compare=False)
    _memo: dict[str, object] = field(default_factory=dict, init=False, compare=False)

    def __post_init__(self) -> None:
        analysis = self.decision.analysis
        if self.active and analysis is not None:
            for number, group in enumerate(analysis.groups):
                for position, ablation in enumerate(group.ablations):
                    self._groups.setdefault((group.dataset, ablation), (number, position))

    @property
    def active(self) -> bool:
        return self.decision.active

    def _place(self, unit: Unit) -> tuple[GroupKey, int] | None:
        """(its group's key, its position in the group's feed order), or None when it runs alone."""
        found = self._groups.get((unit.dataset, unit.ablation))
        if found is None:
            return None
        return (unit.model, unit.adapter, unit.dataset, unit.start, unit.stop, found[0]), found[1]

    def candidates(self, units: Sequence[Unit]) -> list[Unit]:
        """Plan order; in prefix order each group's members follow one another where its first member stood."""
        return self._arranged(units)[0]

    def partners(self, unit: Unit, units: Sequence[Unit]) -> list[Unit]:
        """The other units of `unit`'s group among `units`, in feed order; none in plan order."""
        place = self._place(unit)
        if place is None:
            return []
        return [u for u in self._arranged(units)[1].get(place[0], []) if u.unit_id != unit.unit_id]

    def _arranged(self, units: Sequence[Unit]) -> tuple[list[Unit], dict[GroupKey, list[Unit]]]:
        """(candidates, group key -> members in feed order), kept for the last `units` asked: a worker asks at
        every claim, for the same units, and 10,000 of them should not cost a pass each time."""
        ids = tuple(u.unit_id for u in units)
        if self._memo.get("ids") == ids:
            return self._memo["arranged"]  # type: ignore[return-value]
        members: dict[GroupKey, list[tuple[int, Unit]]] = {}
        for u in units:
            place = self._place(u)
            if place is not None:
                members.setdefault(place[0], []).append((place[1], u))
        groups = {key: [u for _, u in sorted(ms, key=lambda pm: pm[0])] for key, ms in members.items()}
        out: list[Unit] = []
        emitted: set[GroupKey] = set()
        for u in units:
            place = self._place(u)
            if place is None:
                out.append(u)
            elif place[0] not in emitted:
                emitted.add(place[0])
                out += groups[place[0]]
        self._memo.update(ids=ids, arranged=(out, groups))
        return out, groups

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
