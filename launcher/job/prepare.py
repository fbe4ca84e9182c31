"""job/prepare.py: a unit -> its records, prompts and token ids, minus bad rows (quarantined) and rows already done.

Also what the run's prompt statistics are measured with (`Preparer.stats_of`: how long the prompts are, per unit,
read span by span); job/prompt_stats.py decides who measures them and keeps them in the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from launcher.engines import registry
from launcher.inputs.bounded import MAX_ITEMS, RENDER_S, BoundExceeded, deadline
from launcher.inputs.chat import NotUsable
from launcher.inputs.encodable import first_unencodable
from launcher.inputs.guard import InputChanged, InputGuard, PromptClock
from launcher.inputs.prompts import PromptBuilder, make_builder, read_chat_template
from launcher.inputs.records import Quarantined, Record, first_rows, read_shard
from launcher.plan import Unit
from launcher.seeds import record_seed
from launcher.spec import DataSpec, JobSpec, SamplingSpec

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
    backend = registry.named(spec.model.backend)
    if backend is not None and not backend.capabilities.structured_output and "structured" in overrides:
        raise NotUsable(f"body.response_format needs the vLLM backend (model.backend is {backend.name})")
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


def chat_formatter(
    tokenizer: Any, data: DataSpec | None = None, clock: PromptClock | None = None
) -> Callable[[list[dict[str, str]]], str] | None:
    """messages -> prompt text through the chat template: the spec's own (data.chat_template as text), else the
    tokenizer's; None without one, or when data.chat_template is false. A template's `strftime_now` reads `clock`
    (the run's submit time) instead of today; each render is bounded in time (inputs/bounded.py)."""
    if data is not None and data.chat_template is False:
        return None
    template = read_chat_template(data) if data is not None else None
    if template is None and not getattr(tokenizer, "chat_template", None):
        return None
    kwargs = dict(data.chat_template_kwargs) if data is not None else {}
    if template is not None:
        kwargs["chat_template"] = template
    if clock is not None:  # a render variable: it shadows transformers' global of the same name
        kwargs["strftime_now"] = clock.strftime_now()

    def render(messages: list[dict[str, str]]) -> str:
        with deadline(RENDER_S, "the chat template"):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        if len(text) > MAX_ITEMS:
            raise BoundExceeded(f"the chat template wrote {len(text):,} characters: at most {MAX_ITEMS:,}")
        return str(text)

    return render


def model_vocab(spec: JobSpec) -> int | None:
    """The model's embedding rows (config.json vocab_size); None when it does not say."""
    from launcher.inputs.model import read_config

    with contextlib.suppress(OSError, ValueError, TypeError):
        return int(read_config(spec.model.path).get("vocab_size") or 0) or None
    return None


def token_limit(spec: JobSpec) -> int | None:
    """The longest prompt + max_tokens a record may need: the spec's max_model_len, else the model's own."""
    from launcher.inputs.model import read_config

    limits = [spec.model.max_model_len] if spec.model.max_model_len else []
    with contextlib.suppress(OSError, ValueError):
        limits.append(int(read_config(spec.model.path).get("max_position_embeddings") or 0) or 1 << 30)
    return min(limits) if limits else None


class Preparer:
    """Reads and tokenizes units for one worker: the tokenizer and prompt builders are made once."""

    def __init__(
        self,
        spec: JobSpec,
        tokenizer: Any,
        guard: InputGuard | None = None,
        clock: PromptClock | None = None,
        limit: int | None = None,
    ) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.guard = guard  # checks every file a unit reads against the run's record (InputChanged)
        self.chat = chat_formatter(tokenizer, spec.data, clock)
        self.limit = limit if limit is not None else token_limit(spec)  # the engine's max_model_len, when given
        self.vocab = model_vocab(spec)
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

    def encode(self, texts: list[str], templated: list[bool] | None = None) -> list[list[int] | str]:
        """Token ids of each text, or why the tokenizer refused it. A text the chat template made already holds its
        special tokens (BOS). Batches of TOKENIZE_BATCH; a batch the tokenizer refuses is tokenized again one text
        at a time, so only the culprit fails (and is quarantined), never its neighbours."""
        flags = templated if templated is not None else [self.chat is not None] * len(texts)
        out: list[list[int] | str] = [[] for _ in texts]
        for flag in (True, False):
            idx = [i for i, f in enumerate(flags) if f is flag]
            for i in range(0, len(idx), TOKENIZE_BATCH):
                part = idx[i : i + TOKENIZE_BATCH]
                try:
                    ids = self.tokenizer([texts[j] for j in part], add_special_tokens=not flag)["input_ids"]
                except Exception:
                    ids = [self._encode_one(texts[j], flag) for j in part]
                for j, x in zip(part, ids, strict=True):
                    out[j] = x if isinstance(x, str) else list(x)
        return out

    def _encode_one(self, text: str, templated: bool) -> list[int] | str:
        try:
            return list(self.tokenizer([text], add_special_tokens=not templated)["input_ids"][0])
        except Exception as exc:
            return f"the tokenizer failed on this record's prompt: {type(exc).__name__}: {exc}"[:500]

    def _past_vocab(self, token: int) -> str:
        try:
            name = f" ({self.tokenizer.convert_ids_to_tokens(token)!r})"
        except Exception:
            name = ""
        return (
            f"its prompt holds token id {token}{name}, past the model's vocabulary ({self.vocab} entries in "
            "config.json): the tokenizer has tokens the model was not resized for; fix the checkpoint "
            "(resize_token_embeddings) or keep that token out of the data"
        )

    def prepare(self, unit: Unit, done_rows: set[int] | frozenset[int] = frozenset()) -> PreparedUnit:
        """Raises InputChanged (inputs/guard.py) when a file the unit reads is not what the run recorded: before its
        rows are read, and again after (a file replaced while it was read)."""
        spec = self.spec
        split = self.split(unit.dataset)
        fmt = self.format(unit.dataset)
        if self.guard is not None:
            self.guard.check_unit(unit)
        records, bad = read_shard(Path(unit.data_path), unit.start, unit.stop, spec.data.fields, split, fmt)
        first = self.first_rows(unit.data_path, split, fmt)
        if self.guard is not None:
            self.guard.check_unit(unit)
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
                if (why := first_unencodable({"prompt": prompt.text})) is not None:  # a template may make one
                    bad.append(Quarantined(rec.row, why, rec.record_id))
                    continue
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
            if isinstance(tokens, str):
                bad.append(Quarantined(rec.row, tokens, rec.record_id))
                continue
            if self.vocab is not None and tokens and max(tokens) >= self.vocab:
                # A token added to the tokenizer without resizing the model: HF raises on the whole batch, vLLM
                # reads a padding row of its embedding and generates from garbage without a word.
                bad.append(Quarantined(rec.row, self._past_vocab(max(tokens)), rec.record_id))
                continue
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

    def stats_of(
        self, units: list[Unit], tick: Callable[[], None] = lambda: None
    ) -> tuple[dict[str, list[float]], bool]:
        """(unit id -> [records, total prompt tokens, longest prompt], whether a unit was refused). Neighbouring
        units of one dataset x ablation are read as one span (reading a unit alone reads its file from the top: the
        whole run unit by unit would read each file once per unit). A span whose input changed since submit
        (InputChanged) counts as empty: its units are refused when claimed, the others still size the engine. `tick`
        is called after each span (a heartbeat)."""
        out: dict[str, list[float]] = {}
        refused = False
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
                try:
                    token_ids = self.prepare(dataclasses.replace(span[0], stop=span[-1].stop)).token_ids
                except InputChanged:
                    token_ids, refused = {}, True
                for v in span:
                    lengths = [len(token_ids[r]) for r in range(v.start, v.stop) if r in token_ids]
                    out[v.unit_id] = [len(lengths), sum(lengths), max(lengths, default=0)]
                tick()
        return out, refused


STATS_SPAN_ROWS = 50_000  # rows prepared at once when measuring a run's prompts


def may_carry_request_settings(spec: JobSpec) -> bool:
    """Can a record bring its own sampling settings (an OpenAI batch line: stop strings, structured output, which
    need vLLM's own tokenizer)? Yes for an openai-batch dataset, and for an `auto` one whose first line is a batch
    line; one line is read per dataset."""
    from launcher.inputs.chat import is_batch_line

    for ds in spec.data.datasets:
        if ds.format == "openai-batch" or ds.file.suffix.lower() not in (".jsonl", ".json"):
            return True  # a batch file, or one whose first line cannot be peeked at (parquet, CSV, a folder)
        try:
            with open(ds.file, "rb") as f:
                first = next((line for line in f if line.strip()), b"")
            obj = json.loads(first) if first.lstrip().startswith(b"{") else None
        except (OSError, ValueError):
            return True
        if isinstance(obj, dict) and is_batch_line(obj):
            return True
    return False


__all__ = [
    "PreparedUnit",
    "Preparer",
    "chat_formatter",
    "load_tokenizer",
    "may_carry_request_settings",
    "token_limit",
]
