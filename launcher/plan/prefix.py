"""plan/prefix.py: the first rows' prompt token ids -> which ablation configs share a prefix, in what order a worker
feeds them, how much prefill that saves, and whether scheduling.prefix_order is on.

The ablation configs of one user often begin alike: `profile_and_history` and `full` both start with the system
prompt, the profile and the history (the built-in template writes profile, history, context in that order), while
`context_only` shares nothing with them. Which configs share how much follows from the templates and the data, so it
is measured, not guessed from the names: the first rows of each dataset are rendered under every config and
tokenized as a worker does, and the longest common prefix of each pair is averaged over those rows, counted in
whole KV blocks (vLLM caches and reuses full blocks only).

Configs that share at least one block form a group, in an order where each config follows the one it shares the
longest prefix with (a maximum spanning tree, grown from the pair sharing most): fed one user at a time in that
order, each prompt finds that prefix in the cache. Pure: the prompts come from a PromptSource (the worker's
Preparer; on a login node plan/prefix_source.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from launcher.engines import registry
from launcher.spec import JobSpec

# Tokens in a KV block of a prefix cache: vLLM's, which caches and reuses whole blocks only (engines/vllm/sizing.py
# sizes with the same BLOCK; tests/test_backend_registry.py holds them equal).
BLOCK = 16

SAMPLE_ROWS = 16  # rows of each dataset rendered and tokenized to measure the shared prefixes
MIN_SHARED_TOKENS = 256  # auto: a config must find at least this many tokens cached to be worth regrouping claims
MIN_CONFIGS = 2  # ...and the group must hold at least this many configs

Ids = list[int]


class PromptSource(Protocol):
    """What renders and tokenizes prompts exactly as a worker does (job/prepare.Preparer)."""

    def builder(self, ablation: str) -> Any: ...

    def encode(self, texts: list[str], templated: list[bool] | None = None) -> Sequence[list[int] | str]:
        """Token ids per text; a str in place of one is why the tokenizer refused that text (job/prepare.py)."""
        ...


@dataclass(frozen=True)
class PrefixGroup:
    """Ablation configs of one dataset that share a prefix, in feed order."""

    dataset: str
    ablations: tuple[str, ...]
    cached_tokens: tuple[int, ...]
    """Per config (same order): the mean tokens it finds in the cache when it follows the configs before it (0 for
    the first), in whole KV blocks."""
    prompt_tokens: tuple[int, ...]
    """Per config: its mean prompt length on the rows measured."""

    @property
    def longest_shared(self) -> int:
        return max(self.cached_tokens, default=0)


@dataclass(frozen=True)
class PrefixAnalysis:
    groups: tuple[PrefixGroup, ...]  # groups of two or more configs only
    rows_measured: dict[str, int]  # dataset -> rows rendered
    measured_with: str  # "the model's tokenizer" or "an estimate (...)"
    prefill_tokens: int  # prompt tokens of the whole run (mean on the rows measured x rows), every config
    saved_tokens: int  # of those, what the prefix order finds cached from another config of the same user

    @property
    def longest_shared(self) -> int:
        return max((g.longest_shared for g in self.groups), default=0)

    def group_of(self, dataset: str, ablation: str) -> PrefixGroup | None:
        return next((g for g in self.groups if g.dataset == dataset and ablation in g.ablations), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "groups": [
                {
                    "dataset": g.dataset,
                    "ablations": list(g.ablations),
                    "cached_tokens": list(g.cached_tokens),
                    "prompt_tokens": list(g.prompt_tokens),
                }
                for g in self.groups
            ],
            "rows_measured": self.rows_measured,
            "measured_with": self.measured_with,
            "prefill_tokens": self.prefill_tokens,
            "saved_tokens": self.saved_tokens,
        }


@dataclass(frozen=True)
class PrefixDecision:
    mode: Literal["auto", "on", "off"]
    active: bool
    reason: str
    analysis: PrefixAnalysis | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "active": self.active,
            "reason": self.reason,
            **({"analysis": self.analysis.as_json()} if self.analysis is not None else {}),
        }


# -- measuring ------------------------------------------------------------------------------------------------------


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix; slices compare in C, so a 100k-token prompt costs ~17 comparisons."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def reusable(shared: int) -> int:
    """Tokens of a shared prefix vLLM can serve from its cache: whole blocks, and never the prompt's last token
    (its logits are needed, so it is always computed)."""
    return max(0, shared) // BLOCK * BLOCK


def sample_prompt_ids(
    spec: JobSpec, source: PromptSource, rows: int = SAMPLE_ROWS
) -> dict[str, dict[str, dict[int, Ids]]]:
    """dataset -> ablation -> row -> prompt token ids, for the first `rows` readable rows of each dataset. A record
    a template fails on is left out (the worker quarantines it)."""
    from launcher.inputs.records import read_shard

    out: dict[str, dict[str, dict[int, Ids]]] = {}
    for ds in spec.data.datasets:
        stop = min(rows, spec.data.limit or rows)  # never past data.limit: those rows are not the run's
        records, _bad = read_shard(Path(ds.file), 0, stop, spec.data.fields, ds.split, ds.format)
        per: dict[str, dict[int, Ids]] = {}
        for ablation in spec.data.ablation_configs:
            builder = source.builder(ablation)
            texts: list[str] = []
            templated: list[bool] = []
            kept: list[int] = []
            for rec in records:
                try:
                    prompt = builder.prompt(rec)
                except Exception:  # the worker quarantines this record, with its reason
                    continue
                texts.append(prompt.text)
                templated.append(prompt.templated)
                kept.append(rec.row)
            per[ablation] = _encode_each(source, kept, texts, templated)
        out[ds.name] = per
    return out


def _encode_each(source: PromptSource, rows: list[int], texts: list[str], templated: list[bool]) -> dict[int, Ids]:
    """row -> token ids; when the batch fails (a text the tokenizer refuses: a lone surrogate...), row by row, and
    the rows it refuses are left out of the measurement (the worker deals with them as records)."""
    try:
        encoded = source.encode(texts, templated) if texts else []
        return {row: ids for row, ids in zip(rows, encoded, strict=True) if not isinstance(ids, str)}
    except Exception:
        out: dict[int, Ids] = {}
        for row, text, flag in zip(rows, texts, templated, strict=True):
            try:
                ids = source.encode([text], [flag])[0]
            except Exception:
                continue
            if not isinstance(ids, str):
                out[row] = ids
        return out


def analyse(
    spec: JobSpec,
    prompts: Mapping[str, Mapping[str, Mapping[int, Ids]]],
    rows_per_dataset: Mapping[str, int] | None = None,
    measured_with: str = "the model's tokenizer",
) -> PrefixAnalysis:
    """Groups of configs sharing a prefix, per dataset, and the prefill the prefix order saves over the whole run
    (means on the rows measured x each dataset's rows x models x adapters)."""
    variants = len(spec.model_names()) * len(spec.adapter_names())
    groups: list[PrefixGroup] = []
    prefill = saved = 0.0
    measured: dict[str, int] = {}
    for ds in spec.data.datasets:
        per = prompts.get(ds.name) or {}
        rows = sorted(set().union(*(set(v) for v in per.values()))) if per else []
        measured[ds.name] = len(rows)
        if not rows:
            continue
        total_rows = (rows_per_dataset or {}).get(ds.name, len(rows))
        lengths = {a: _mean([len(ids) for ids in per.get(a, {}).values()]) for a in spec.data.ablation_configs}
        prefill += sum(lengths.values()) * total_rows * variants
        shared = _pairwise(per, spec.data.ablation_configs)
        for members in _components(spec.data.ablation_configs, shared):
            order, cached = _feed_order(members, shared)
            groups.append(PrefixGroup(ds.name, tuple(order), tuple(cached), tuple(round(lengths[a]) for a in order)))
            saved += sum(cached) * total_rows * variants
    return PrefixAnalysis(tuple(groups), measured, measured_with, round(prefill), round(saved))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _pairwise(per: Mapping[str, Mapping[int, Ids]], ablations: Sequence[str]) -> dict[frozenset[str], int]:
    """{a, b} -> mean reusable shared prefix over the rows both have."""
    shared: dict[frozenset[str], int] = {}
    for a, b in itertools.combinations(ablations, 2):
        pa, pb = per.get(a, {}), per.get(b, {})
        both = [r for r in pa if r in pb]
        # min(len) - 1: the last prompt token is always computed, even when one prompt is a prefix of the other
        values = [reusable(min(common_prefix(pa[r], pb[r]), len(pa[r]) - 1, len(pb[r]) - 1)) for r in both]
        shared[frozenset((a, b))] = int(_mean(values))
    return shared


def _components(ablations: Sequence[str], shared: Mapping[frozenset[str], int]) -> list[list[str]]:
    """Configs linked by at least one reusable block, in spec order; groups of one are left out."""
    seen: set[str] = set()
    out: list[list[str]] = []
    for start in ablations:
        if start in seen:
            continue
        members, todo = [], [start]
        while todo:
            a = todo.pop()
            if a in seen:
                continue
            seen.add(a)
            members.append(a)
            todo += [b for b in ablations if b not in seen and shared.get(frozenset((a, b)), 0) >= BLOCK]
        if len(members) > 1:
            out.append([a for a in ablations if a in members])
    return out


def _feed_order(members: list[str], shared: Mapping[frozenset[str], int]) -> tuple[list[str], list[int]]:
    """Prim's maximum spanning tree from the pair sharing most: each next config is the one with the longest prefix
    shared with a config already fed (ties: spec order). Returns the order and what each finds cached."""
    pairs = sorted(
        itertools.combinations(members, 2), key=lambda p: (-shared.get(frozenset(p), 0), members.index(p[0]))
    )
    order = [pairs[0][0]]
    cached = [0]
    while len(order) < len(members):
        best = max(
            (a for a in members if a not in order),
            key=lambda a: (max(shared.get(frozenset((a, b)), 0) for b in order), -members.index(a)),
        )
        cached.append(max(shared.get(frozenset((best, b)), 0) for b in order))
        order.append(best)
    return order, cached


# -- deciding -------------------------------------------------------------------------------------------------------


def decide(spec: JobSpec, analysis: PrefixAnalysis | None) -> PrefixDecision:
    """scheduling.prefix_order -> on or off, and why (the summary and `launcher plan` show the reason)."""
    mode = spec.scheduling.prefix_order
    found = _found(analysis)
    if mode == "off":
        head, active = "scheduling.prefix_order: off: plan order", False
    elif mode == "on":
        active = bool(analysis and analysis.groups)
        head = "scheduling.prefix_order: on" + ("" if active else ", nothing to group")
    elif no_cache := no_prefix_cache(spec):
        head, active = f"auto: off: {no_cache}", False
    else:
        groups = analysis.groups if analysis is not None else ()
        active = (
            max((g.longest_shared for g in groups if len(g.ablations) >= MIN_CONFIGS), default=0) >= MIN_SHARED_TOKENS
        )
        rule = f"{MIN_CONFIGS} or more configs sharing >= {MIN_SHARED_TOKENS} tokens"
        head = f"auto: on ({rule})" if active else f"auto: off (wants {rule})"
    return PrefixDecision(mode, active, f"{head}. {found}".strip(), analysis)


def no_prefix_cache(spec: JobSpec) -> str:
    """Why the engine would keep no prefix cache ("" when it keeps one): auto then stays off."""
    backend = registry.named(spec.model.backend)
    if backend is not None and not backend.capabilities.prefix_cache:
        return f"backend {backend.name} keeps no prefix cache"
    if spec.model.engine_args.get("enable_prefix_caching") is False:
        return "model.engine_args sets enable_prefix_caching: false, so vLLM would not reuse a shared prefix"
    return ""


def _found(analysis: PrefixAnalysis | None) -> str:
    if analysis is None:
        return ""
    rows = max(analysis.rows_measured.values(), default=0)
    if not rows:
        return "No rows to measure."
    how = f"Measured on the first {rows} rows with {analysis.measured_with}."
    if not analysis.groups:
        return f"No two configs share a {BLOCK}-token KV block of prefix. {how}"
    parts = [
        f"{', '.join(g.ablations)} share ~{g.longest_shared:,} tokens in {g.dataset}"
        for g in sorted(analysis.groups, key=lambda g: -g.longest_shared)[:3]
    ]
    more = f" (+{len(analysis.groups) - 3} more groups)" if len(analysis.groups) > 3 else ""
    share = analysis.saved_tokens / analysis.prefill_tokens if analysis.prefill_tokens else 0.0
    return (
        "; ".join(parts)
        + more
        + f": in prefix order ~{analysis.saved_tokens:,} of the run's {analysis.prefill_tokens:,} prefill tokens come "
        f"from the cache ({share:.0%}). {how}"
    )


__all__ = [
    "MIN_CONFIGS",
    "MIN_SHARED_TOKENS",
    "SAMPLE_ROWS",
    "PrefixAnalysis",
    "PrefixDecision",
    "PrefixGroup",
    "PromptSource",
    "analyse",
    "common_prefix",
    "decide",
    "no_prefix_cache",
    "reusable",
    "sample_prompt_ids",
]
