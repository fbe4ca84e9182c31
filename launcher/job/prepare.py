"""job/prepare.py: a unit -> its records, prompts and token ids, minus bad rows (quarantined) and rows already done.

Also the run's prompt statistics (how long the prompts are, per unit), which size the engine once for every unit
a worker may run: measured by one worker (a claim decides which; the others wait) and kept in the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from launcher.engines import Workload
from launcher.inputs.chat import NotUsable
from launcher.inputs.prompts import PromptBuilder, make_builder, read_chat_template
from launcher.inputs.records import Quarantined, Record, first_rows, read_shard
from launcher.plan import Plan, Unit
from launcher.seeds import record_seed
from launcher.spec import DataSpec, JobSpec, SamplingSpec
from launcher.store import ClaimBook, Owner, RunDir, read_json, write_json_atomic

log = logging.getLogger("launcher.job")
TOKENIZE_BATCH = 256


@dataclass(frozen=True)
class RequestSettings:
    """A request's own sampling settings and number of samples (an OpenAI batch line's body)."""

    sampling: SamplingSpec
    n: int


def request_settings(spec: JobSpec, rec: Record) -> RequestSettings | None:
    """The record's own settings, validated as the spec's are; None when it has none. Raises NotUsable (the record
    is quarantined, with the field and what is allowed) for a value the spec would refuse."""
    if rec.request is None or not rec.request.overrides:
        return None
    overrides = dict(rec.request.overrides)
    n = overrides.pop("n", spec.data.num_samples)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
        raise NotUsable(f"body.n must be an integer in [1, 1024], got {n!r}")
    if spec.model.backend == "hf" and "structured" in overrides:
        raise NotUsable("body.response_format needs the vLLM backend (model.backend is hf)")
    try:
        sampling = SamplingSpec.model_validate({**spec.sampling.model_dump(exclude_none=True), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise NotUsable(f"body.{where}: {err['msg']}") from None
    return RequestSettings(sampling, n)


@dataclass
class PreparedUnit:
    """What a worker needs to run a unit: the rows still to generate, with their prompt token ids and seeds."""

    unit: Unit
    records: dict[int, Record]  # row -> record, every valid row of the unit
    prompts: dict[int, str]  # row -> prompt text, rows still to do
    token_ids: dict[int, list[int]]  # row -> prompt token ids, rows still to do
    seeds: dict[int, int]  # row -> the record's seed
    quarantined: list[Quarantined] = field(default_factory=list)
    settings: dict[int, RequestSettings] = field(default_factory=dict)  # row -> its own sampling (batch lines)

    def todo(self) -> list[int]:
        """Rows still to generate, longest prompt first: similar lengths batch together."""
        return sorted(self.token_ids, key=lambda r: (-len(self.token_ids[r]), r))


def load_tokenizer(spec: JobSpec) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)


def chat_formatter(tokenizer: Any, data: DataSpec | None = None) -> Callable[[list[dict[str, str]]], str] | None:
    """messages -> prompt text through the chat template: the spec's own (data.chat_template as text), else the
    tokenizer's; None without one, or when data.chat_template is false."""
    if data is not None and data.chat_template is False:
        return None
    template = read_chat_template(data) if data is not None else None
    if template is None and not getattr(tokenizer, "chat_template", None):
        return None
    kwargs = dict(data.chat_template_kwargs) if data is not None else {}
    if template is not None:
        kwargs["chat_template"] = template
    return lambda messages: tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
    )


def token_limit(spec: JobSpec) -> int | None:
    """The longest prompt + max_tokens a record may need: the spec's max_model_len, else the model's own."""
    from launcher.inputs.model import read_config

    limits = [spec.model.max_model_len] if spec.model.max_model_len else []
    with contextlib.suppress(OSError, ValueError):
        limits.append(int(read_config(spec.model.path).get("max_position_embeddings") or 0) or 1 << 30)
    return min(limits) if limits else None


class Preparer:
    """Reads and tokenizes units for one worker: the tokenizer and prompt builders are made once."""

    def __init__(self, spec: JobSpec, tokenizer: Any) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.chat = chat_formatter(tokenizer, spec.data)
        self.limit = token_limit(spec)
        self._builders: dict[str, PromptBuilder] = {}
        self._first: dict[str, dict[str, int]] = {}

    def split(self, dataset: str) -> str | None:
        return next((d.split for d in self.spec.data.datasets if d.name == dataset), None)

    def format(self, dataset: str) -> str:
        return next((d.format for d in self.spec.data.datasets if d.name == dataset), "auto")

    def first_rows(self, data_path: str, split: str | None = None, fmt: str = "auto") -> dict[str, int]:
        """The dataset's first row of each record id (read once per worker): duplicates are found across units."""
        key = f"{data_path}\0{split}\0{fmt}"
        if key not in self._first:
            self._first[key] = first_rows(Path(data_path), self.spec.data.fields, split=split, fmt=fmt)
        return self._first[key]

    def builder(self, ablation: str) -> PromptBuilder:
        if ablation not in self._builders:
            self._builders[ablation] = make_builder(self.spec.data, ablation, self.chat)
        return self._builders[ablation]

    def encode(self, texts: list[str], templated: list[bool] | None = None) -> list[list[int]]:
        """Token ids of each text; a text the chat template made already holds its special tokens (BOS)."""
        flags = templated if templated is not None else [self.chat is not None] * len(texts)
        out: list[list[int]] = [[] for _ in texts]
        for flag in (True, False):
            idx = [i for i, f in enumerate(flags) if f is flag]
            for i in range(0, len(idx), TOKENIZE_BATCH):
                part = idx[i : i + TOKENIZE_BATCH]
                ids = self.tokenizer([texts[j] for j in part], add_special_tokens=not flag)["input_ids"]
                for j, x in zip(part, ids, strict=True):
                    out[j] = list(x)
        return out

    def prepare(self, unit: Unit, done_rows: set[int] | frozenset[int] = frozenset()) -> PreparedUnit:
        spec = self.spec
        split = self.split(unit.dataset)
        fmt = self.format(unit.dataset)
        records, bad = read_shard(Path(unit.data_path), unit.start, unit.stop, spec.data.fields, split, fmt)
        first = self.first_rows(unit.data_path, split, fmt)
        kept: list[Record] = []
        for rec in records:
            if first.get(rec.record_id, rec.row) != rec.row:
                bad.append(
                    Quarantined(
                        rec.row,
                        f"duplicate record id {rec.record_id!r} (first at row {first[rec.record_id]})",
                        rec.record_id,
                    )
                )
                continue
            kept.append(rec)
        builder = self.builder(unit.ablation)
        texts: list[str] = []
        templated: list[bool] = []
        rendered: list[Record] = []
        for rec in kept:
            try:
                prompt = builder.prompt(rec)
                texts.append(prompt.text)
                templated.append(prompt.templated)
                rendered.append(rec)
            except Exception as exc:  # a value the dry render at plan time could not foresee: this record only
                bad.append(
                    Quarantined(
                        rec.row,
                        f"the prompt template failed on this record: {type(exc).__name__}: {exc}"[:500],
                        rec.record_id,
                    )
                )
        kept = rendered
        ids = self.encode(texts, templated)
        out = PreparedUnit(unit, {}, {}, {}, {})
        for rec, text, tokens in zip(kept, texts, ids, strict=True):
            try:
                own = request_settings(spec, rec)
            except NotUsable as exc:
                bad.append(Quarantined(rec.row, str(exc), rec.record_id))
                continue
            sampling = own.sampling if own else spec.sampling
            if self.limit is not None and len(tokens) + sampling.max_tokens > self.limit:
                bad.append(
                    Quarantined(
                        rec.row,
                        f"prompt of {len(tokens)} tokens + max_tokens "
                        f"{sampling.max_tokens} exceeds the context length {self.limit}",
                        rec.record_id,
                    )
                )
                continue
            out.records[rec.row] = rec
            if rec.row in done_rows:
                continue
            out.prompts[rec.row] = text
            out.token_ids[rec.row] = tokens
            out.seeds[rec.row] = record_seed(sampling.seed, rec.record_id)
            if own is not None:
                out.settings[rec.row] = own
        out.quarantined = sorted(bad, key=lambda q: q.row)
        return out

    def lengths(self, unit: Unit) -> list[int]:
        """Prompt lengths of the unit's valid rows (what the engine is sized for)."""
        p = self.prepare(unit)
        return [len(t) for t in p.token_ids.values()]

    def stats_of(self, units: list[Unit], tick: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
        """unit id -> [records, total prompt tokens, longest prompt]. Neighbouring units of one dataset x ablation are
        read as one span (reading a unit alone reads its file from the top: the whole run unit by unit would read
        each file once per unit). `tick` is called after each span (a heartbeat)."""
        out: dict[str, list[float]] = {}
        groups: dict[tuple[str, str, str], list[Unit]] = {}
        for u in units:
            groups.setdefault((u.data_path, u.dataset, u.ablation), []).append(u)
        for group in groups.values():
            group.sort(key=lambda u: u.start)
            spans: list[list[Unit]] = []
            for u in group:
                if spans and u.start == spans[-1][-1].stop and u.stop - spans[-1][0].start <= STATS_SPAN_ROWS:
                    spans[-1].append(u)
                else:
                    spans.append([u])
            for span in spans:
                p = self.prepare(dataclasses.replace(span[0], stop=span[-1].stop))
                for v in span:
                    lengths = [len(p.token_ids[r]) for r in range(v.start, v.stop) if r in p.token_ids]
                    out[v.unit_id] = [len(lengths), sum(lengths), max(lengths, default=0)]
                tick()
        return out


STATS_SPAN_ROWS = 50_000  # rows prepared at once when measuring a run's prompts
STATS_POLL_S = 2.0  # how often a worker waiting for another's measurement looks for its file
STATS_CLAIM_EVERY = 5  # polls between two looks at whether the measuring worker is still alive


def prompt_stats(plan: Plan, preparer: Preparer, units: list[Unit] | None = None) -> dict[str, list[float]]:
    """unit id -> [records, total prompt tokens, longest prompt], for every unit of the run (units=None) or for
    `units`. The run's are measured once, by one worker, and kept in the run directory: the others wait for that
    file instead of each tokenizing the whole run at once (256 workers starting together would do it 256 times)."""
    run: RunDir = plan.run
    wanted = units if units is not None else list(plan.units)
    stats = _cached_stats(run)
    if all(u.unit_id in stats for u in wanted):
        return stats
    if units is not None:
        stats.update(preparer.stats_of([u for u in wanted if u.unit_id not in stats]))
        return stats
    book = ClaimBook(run.prompt_stats_claims)
    me = Owner.me("prompt-stats")
    polls = 0
    while True:
        claim = book.try_claim(me) if polls % STATS_CLAIM_EVERY == 0 else None
        if claim is not None:
            try:
                stats = _cached_stats(run)  # the previous measurer may have finished just before we won
                missing = [u for u in wanted if u.unit_id not in stats]
                if missing:
                    stats.update(preparer.stats_of(missing, tick=partial(ClaimBook.heartbeat, claim)))
                    write_json_atomic(run.prompt_stats, {"units": stats})
            finally:
                book.release(claim)
            return stats
        time.sleep(STATS_POLL_S)
        polls += 1
        stats = _cached_stats(run)
        if all(u.unit_id in stats for u in wanted):
            return stats


def _cached_stats(run: RunDir) -> dict[str, list[float]]:
    cached = read_json(run.prompt_stats)
    return {k: list(v) for k, v in (cached.get("units") or {}).items()}


def workload_of(stats: dict[str, list[float]], units: list[Unit], spec: JobSpec) -> Workload:
    rows = [stats[u.unit_id] for u in units if u.unit_id in stats]
    records = int(sum(r[0] for r in rows))
    total = sum(r[1] for r in rows)
    longest = int(max((r[2] for r in rows), default=0))
    return Workload(
        records, total / records if records else 0.0, longest, spec.sampling.max_tokens, spec.data.num_samples
    )


__all__ = ["PreparedUnit", "Preparer", "chat_formatter", "load_tokenizer", "prompt_stats", "token_limit", "workload_of"]
