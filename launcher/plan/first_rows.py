"""plan/first_rows.py: the first rows of each dataset, made into prompts as workers will -> refused at plan (exit 2)
when the settings can only waste GPUs.

- a data.fields column set in the spec that none of the first rows has: its part of every prompt would be empty
  without a word (a typo, or another dataset's column names);
- every one of the first rows fails its prompt (the template, the chat template, the record's own settings), or
  is too long for the context with max_tokens (counted with the model's tokenizer.json when the `tokenizers`
  library is here): the run would quarantine every record and generate nothing.
Reads files only (SAMPLE_ROWS rows per dataset); every render is bounded (inputs/bounded.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.spec import JobSpec

SAMPLE_ROWS = 200
COLUMN_FIELDS = ("profile", "history", "context", "messages")
TOKEN_MARGIN = 0.9  # the plan's count may differ a little from the worker's (special tokens): refuse only when clear


def check_first_rows(spec: JobSpec) -> None:
    from launcher.inputs.records import Record, head_rows, to_record

    for i, ds in enumerate(spec.data.datasets):
        key = ("data", "datasets", i, "path")
        limit = min(SAMPLE_ROWS, spec.data.limit or SAMPLE_ROWS)
        try:
            rows = head_rows(ds.file, limit, ds.split)
        except Exception:  # check_datasets said what cannot be read
            continue
        items = (to_record(n, obj, spec.data.fields, ds.format) for n, obj in rows)
        records = [r for r in items if isinstance(r, Record)]
        if not records:
            continue  # check_datasets refuses a dataset without a usable row
        if ds.format != "openai-batch":
            _check_columns(spec, key, ds.file, [obj for _, obj in rows if isinstance(obj, dict)])
        for ablation in spec.data.ablation_configs:
            _check_prompts(spec, key, ds.file, ablation, records)


def _check_columns(spec: JobSpec, key: tuple[str | int, ...], path: Path, rows: list[dict[str, Any]]) -> None:
    fields = spec.data.fields
    seen = {str(k) for row in rows for k in row}
    for name in COLUMN_FIELDS:
        column = getattr(fields, name)
        if column == type(fields).model_fields[name].default:  # the default names optional columns; a name given
            continue  # in the spec is one the user expects the file to have
        if column not in seen:
            raise spec.error(
                ("data", "fields", name),
                f"column {column!r} is in none of the first {len(rows)} rows of {path}: every prompt's {name} part "
                "would be empty",
                f"a column of the file: {', '.join(sorted(seen)[:15]) or 'none'}",
                f"set data.fields.{name} to the column that holds it (or remove it)",
            )


def _check_prompts(spec: JobSpec, key: tuple[str | int, ...], path: Path, ablation: str, records: list[Any]) -> None:
    from launcher.inputs.prompts import make_builder

    chat = _chat_renderer(spec)
    builder = make_builder(spec.data, ablation, chat)
    texts: list[str] = []
    first_error = ""
    for rec in records:
        try:
            texts.append(builder.prompt(rec).text)
        except Exception as exc:
            first_error = first_error or f"row {rec.row}: {type(exc).__name__}: {exc}"[:300]
    tpl = spec.data.templates.get(ablation)
    part = "text" if tpl is not None and tpl.text is not None else "file"
    where = spec.where("data", "templates", ablation, part) if tpl is not None else spec.where(*key)
    if not texts:
        raise SpecError.one(
            where,
            f"data.templates.{ablation}" if ablation in spec.data.templates else "data.ablation_configs",
            f"the prompt fails on every one of the first {len(records)} records of {path} (ablation {ablation!r}): "
            f"{first_error}; every record would be quarantined",
            allowed="a template (and chat template) that renders these records",
            fix="check the template's variables and columns against the file (record['column'] reads any column)",
        )
    counts = _token_counts(spec, texts)
    limit = _context_limit(spec)
    if counts and limit:
        shortest = min(counts)
        if shortest * TOKEN_MARGIN + spec.sampling.max_tokens > limit:
            raise spec.error(
                ("sampling", "max_tokens"),
                f"the shortest prompt of the first {len(texts)} records of {path} (ablation {ablation!r}) has about "
                f"{shortest} tokens; with max_tokens {spec.sampling.max_tokens} that exceeds the context of {limit} "
                "tokens: every record would be quarantined",
                f"max_tokens + prompt tokens <= {limit}",
                "lower sampling.max_tokens, raise model.max_model_len (within the model's context), or shorten "
                "the prompts (the template, data.preamble)",
            )


def _chat_renderer(spec: JobSpec) -> Callable[[list[dict[str, str]]], str] | None:
    """The chat template as a plan can render it (inputs/bounded.py's replica of transformers' environment)."""
    if spec.data.chat_template is False:
        return None
    from launcher.inputs.bounded import BoundedChatSandbox, render
    from launcher.inputs.model import model_chat_template
    from launcher.inputs.prompts import read_chat_template

    text = read_chat_template(spec.data) or model_chat_template(Path(spec.model.path))
    if text is None:
        return None
    template = BoundedChatSandbox().from_string(text)
    variables = {**_special_tokens(Path(spec.model.path)), **spec.data.chat_template_kwargs}
    return lambda messages: render(template, {**variables, "messages": messages, "add_generation_prompt": True})


def _special_tokens(model_dir: Path) -> dict[str, str]:
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    out: dict[str, str] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(name) if isinstance(config, dict) else None
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[name] = value
    return out


def _token_counts(spec: JobSpec, texts: list[str]) -> list[int]:
    """Token counts with the model's tokenizer.json (the `tokenizers` library, no transformers); [] without one."""
    path = Path(spec.model.path) / "tokenizer.json"
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    except Exception:  # no tokenizers library on this login node, or a tokenizer.json it cannot read: no count
        return []


def _context_limit(spec: JobSpec) -> int | None:
    from launcher.inputs.model import read_config

    limits = [spec.model.max_model_len] if spec.model.max_model_len else []
    try:
        config = read_config(spec.model.path)
        config = config.get("text_config", config) if "max_position_embeddings" not in config else config
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
    except (OSError, ValueError, AttributeError):
        pass
    return min(limits) if limits else None


__all__ = ["check_first_rows"]
