"""submit/openai_batch.py: `launcher batch -i IN.jsonl -o OUT.jsonl --model PATH`, vLLM's `run-batch` on our runs.

The input is an OpenAI Batch API file; each line becomes a record (custom_id = record id) of an ordinary run, so
planning, units, workers, resume and gather are the same as for any spec: a huge file runs as many units, on
Slurm with `--executor slurm`, and the same command again resumes. Once gathered, OUT.jsonl gets one line per
input line, in input order: the response (a chat.completion or text_completion object), or the reason the line
was not run (error), never both. Ids in OUT are derived from the run and the custom_id, so a rerun writes the same
bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.gather.samples import read_samples
from launcher.inputs.chat import CHAT_URL, parse_batch_line
from launcher.inputs.records import BadRow, Record, iter_rows, to_record
from launcher.plan import Plan
from launcher.spec import FieldNames, JobSpec
from launcher.store import read_jsonl, write_atomic

DATASET = "batch"
ABLATION = "full"  # a batch line is its own prompt: one cell, whichever ablation config runs it


@dataclass(frozen=True)
class BatchInput:
    spec: JobSpec  # the run behind the file
    requests: int  # lines that are batch requests
    bad_lines: int  # lines that are not (each gets an error line in the output)


def batch_spec(
    input_path: Path, output_path: Path, model: str | None, spec_path: str | None, overrides: list[str]
) -> BatchInput:
    """The run behind a batch file: the spec given (its data section replaced), or a minimal local one. OpenAI's
    defaults where it has them: one sample per line, top_p 1, no top-k."""
    from launcher.spec.load import Layers, apply_overrides, load_layers
    from launcher.spec.validate import validate

    if not input_path.is_file():
        raise SpecError.one(
            "-i", "", f"no such file: {input_path}", fix="give the OpenAI batch input file (one request per line)"
        )
    if output_path.resolve() == input_path.resolve():
        raise SpecError.one(
            "-o", "", "the output would overwrite the input file", fix="give -o another file (e.g. results.jsonl)"
        )
    layers = load_layers(Path(spec_path), []) if spec_path else Layers(data={}, root="launcher batch")
    given = layers.data
    own: dict[str, Any] = {
        "data": {
            "datasets": [{"name": DATASET, "path": str(input_path.resolve()), "format": "openai-batch"}],
            "ablation_configs": [ABLATION],
        },
    }
    if not spec_path:
        own |= {
            "name": _name(input_path),
            "executor": "local",
            "sampling": {"top_p": 1.0, "top_k": -1},
            "data": {**own["data"], "num_samples": 1},
        }
    if "output" not in given:
        own["output"] = {"dir": str(output_path.resolve().with_name(output_path.name + ".run"))}
    if model:
        own["model"] = {"path": model}
    where = {("model",): "--model", ("output",): "-o", ("data",): "-i"}
    layers.merge(
        own,
        where_of=lambda key: next((where[key[:n]] for n in range(len(key), 0, -1) if key[:n] in where), "batch"),
        base=Path.cwd(),
    )
    apply_overrides(layers, overrides)
    if "path" not in (layers.data.get("model") or {}):
        raise SpecError.one("launcher batch", "model.path", "no model given", fix="pass --model PATH (or --spec)")
    spec = validate(layers, JobSpec)
    requests, bad, dupes = _scan(input_path, spec.data.fields)
    if dupes:
        shown = ", ".join(f"{k!r} x{v}" for k, v in sorted(dupes.items())[:5])
        raise SpecError.one(
            str(input_path),
            "custom_id",
            f"{len(dupes)} custom_id(s) used by more than one line: {shown}",
            allowed="each custom_id once (it names the request's result in the output)",
            fix="give every line its own custom_id",
        )
    return BatchInput(spec, requests, bad)


def _scan(input_path: Path, fields: FieldNames) -> tuple[int, int, dict[str, int]]:
    """One pass over the file, read as a worker reads it: (request lines, bad lines, custom_ids used twice or more)."""
    counts: dict[str, int] = {}
    bad = 0
    for row, obj in iter_rows(input_path):
        item = to_record(row, obj, fields, "openai-batch")
        if isinstance(item, Record):
            counts[item.record_id] = counts.get(item.record_id, 0) + 1
        else:
            bad += 1
    return sum(counts.values()), bad, {k: v for k, v in counts.items() if v > 1}


def _name(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem).lstrip("._-")[:40]
    return f"batch-{stem or 'input'}"


def _id(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _response_body(line: dict[str, Any], row: dict[str, Any], model: str, created: int, run_id: str) -> dict[str, Any]:
    request, _, _ = parse_batch_line(line)
    chat = request.url == CHAT_URL
    choices: list[dict[str, Any]] = []
    for i, (text, reason) in enumerate(zip(row["generated_samples"], row["finish_reasons"], strict=True)):
        choice: dict[str, Any] = {"index": i}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choices.append({**choice, "logprobs": None, "finish_reason": reason})
    completion_tokens = sum(row["sample_tokens"])
    return {
        "id": _id("chatcmpl-" if chat else "cmpl-", run_id, request.custom_id),
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": request.model or model,
        "choices": choices,
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": completion_tokens,
            "total_tokens": row["prompt_tokens"] + completion_tokens,
        },
    }


def output_lines(plan: Plan, input_path: Path) -> Iterator[dict[str, Any]]:
    """One output object per input line, in input order."""
    cell = plan.run.cell(f"{DATASET}/{ABLATION}")
    rows = {r["row"]: r for r in read_samples(cell.root)}
    quarantined = {q["row"]: q["reason"] for q in read_jsonl(cell.quarantine)} if cell.quarantine.exists() else {}
    first = ((plan.run.read_run() or {}).get("submissions") or [{}])[0]
    created = int(first.get("submitted_epoch") or 0)  # the run's first submit: a rerun writes the same bytes
    model = Path(plan.spec.model.path).name
    run_id = plan.run.run_id
    for row, obj in iter_rows(input_path):
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        custom_id = str(custom_id) if isinstance(custom_id, (str, int)) and not isinstance(custom_id, bool) else None
        out_id = _id("batch_req_", run_id, str(custom_id), str(row))
        if row in rows and isinstance(obj, dict):
            body = _response_body(obj, dict(rows[row]), model, created, run_id)
            yield {
                "id": out_id,
                "custom_id": custom_id,
                "response": {"status_code": 200, "request_id": _id("req_", run_id, str(custom_id)), "body": body},
                "error": None,
            }
            continue
        reason = quarantined.get(row)
        if reason is None:
            reason = obj.reason if isinstance(obj, BadRow) else "not run (the run has no result for this line)"
        yield {
            "id": out_id,
            "custom_id": custom_id,
            "response": None,
            "error": {"code": "invalid_request" if row in quarantined or isinstance(obj, BadRow) else "not_run",
                      "message": reason, "line": row + 1},
        }  # fmt: skip


def write_output(plan: Plan, input_path: Path, output_path: Path) -> tuple[int, int]:
    """OUT.jsonl, written whole to a temporary name and renamed; (responses, errors)."""
    ok = bad = 0
    lines = []
    for obj in output_lines(plan, input_path):
        ok += obj["error"] is None
        bad += obj["error"] is not None
        lines.append(json.dumps(obj, ensure_ascii=False, sort_keys=False) + "\n")
    write_atomic(output_path, "".join(lines).encode())
    return ok, bad


__all__ = ["BatchInput", "batch_spec", "output_lines", "write_output"]
