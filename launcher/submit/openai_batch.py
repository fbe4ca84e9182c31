"""submit/openai_batch.py: `launcher batch -i IN.jsonl -o OUT.jsonl --model PATH`, vLLM's `run-batch` on our runs.

The input is an OpenAI Batch API file; each line becomes a record (custom_id = record id) of an ordinary run, so
planning, units, workers, resume and gather are the same as for any spec: a huge file runs as many units, on
Slurm with `--executor slurm`, and the same command again resumes. Once gathered, OUT.jsonl gets one line per
input line, in input order: the response (a chat.completion or text_completion object), or the reason the line
was not run (error), never both. Ids in OUT are derived from the run and the custom_id, so a rerun writes the same
bytes.

A response is what the run generated for that custom_id, never what sits at the same line number: the input is read
again only to learn each line's custom_id, endpoint and model, and only once it is proven to hold the bytes the run
read (the identity recorded at submit, and an unchanged file while it is read). An input changed mid-run is refused
(the workers refuse the units they read after it; OUT is not written), with the fixes `launcher batch` takes: put the
file back and run the same command, or `--new-run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError, Refused, SpecError
from launcher.gather.samples import read_samples
from launcher.inputs.chat import CHAT_URL, parse_batch_line
from launcher.inputs.identity import file_identity
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
    check_output_file(output_path)
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


def check_output_file(path: Path) -> None:
    """-o must be a file this user can write, checked before anything runs (OUT is written only at the end)."""
    if path.is_dir():
        raise SpecError.one(
            "-o",
            "",
            f"{path} is a folder",
            allowed="a file (OUT.jsonl)",
            fix=f"give a file, e.g. -o {path / 'results.jsonl'}",
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, so {path} cannot be created"
    elif existing == path.parent:
        try:  # as root, os.access says yes to anything: a real file in the folder says what the storage allows
            fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = f"cannot write in {existing}: {exc.strerror}"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"cannot create {path.parent}: no permission to write in {existing}"
    if problem is None and path.exists() and not os.access(path, os.W_OK):
        problem = f"{path} exists and is not writable"
    if problem:
        raise SpecError.one(
            "-o", "", problem, allowed="a file in a folder you can write to", fix="give -o a path you can write"
        )


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


def _verified_rows(plan: Plan, input_path: Path, command: str) -> list[tuple[int, dict[str, Any] | BadRow]]:
    """The input's lines, read only if the file holds what the run read (Refused otherwise, with the fixes)."""
    from launcher.inputs.guard import read_record

    recorded = (read_record(plan.run).get("identity") or plan.run.read_run().inputs or {}).get("data") or {}
    expected = recorded.get(DATASET)

    def refuse(why: str) -> LauncherError:
        return Refused.one(
            str(input_path),
            "-i",
            f"{why}: its answers cannot be matched to its lines; {plan.run.root} keeps what was generated",
            fix=f"put back the file the run read and run `{command}` again, or `{command} --new-run` for a run "
            "of the file as it is now",
        )

    def stat_key() -> tuple[int, int, int, int]:
        st = input_path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    before = stat_key()
    if expected is not None and file_identity(input_path) != expected:
        raise refuse("the input changed since the run read it")
    rows = list(iter_rows(input_path))
    if stat_key() != before:
        raise refuse("the input changed while it was read")
    return rows


def output_lines(plan: Plan, input_path: Path, command: str = "launcher batch") -> Iterator[dict[str, Any]]:
    """One output object per input line, in input order: the run's samples of its custom_id, or why it has none."""
    cell = plan.run.cell(f"{DATASET}/{ABLATION}")
    generated = {str(r["record_id"]): r for r in read_samples(cell.root)}
    try:  # read through the checked cell folder: a link or another user's file there is refused
        quarantined = {q["row"]: q["reason"] for q in read_jsonl(cell.quarantine, plan.run.outputs().opener)}
    except FileNotFoundError:
        quarantined = {}
    created = int(plan.run.read_run().first.submitted_epoch)  # the run's first submit: a rerun writes the same bytes
    model = Path(plan.spec.model.path).name
    run_id = plan.run.run_id
    for row, obj in _verified_rows(plan, input_path, command):
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        custom_id = str(custom_id) if isinstance(custom_id, (str, int)) and not isinstance(custom_id, bool) else None
        out_id = _id("batch_req_", run_id, str(custom_id), str(row))
        got = generated.get(custom_id) if custom_id is not None and row not in quarantined else None
        if got is not None and isinstance(obj, dict):
            body = _response_body(obj, dict(got), model, created, run_id)
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


def write_output(plan: Plan, input_path: Path, output_path: Path, command: str = "launcher batch") -> tuple[int, int]:
    """OUT.jsonl, written whole to a temporary name and renamed; (responses, errors)."""
    ok = bad = 0
    lines: list[bytes] = []
    for obj in output_lines(plan, input_path, command):
        ok += obj["error"] is None
        bad += obj["error"] is not None
        lines.append(_output_line(obj))
    write_atomic(output_path, b"".join(lines))
    return ok, bad


def _output_line(obj: dict[str, Any]) -> bytes:
    """One output line, UTF-8 text as it is. A line whose custom_id (or error) holds a lone surrogate (such a line is
    refused) is written with JSON escapes instead: json.loads gives back exactly the custom_id the input had."""
    try:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(obj) + "\n").encode()


__all__ = ["BatchInput", "batch_spec", "output_lines", "write_output"]
