"""inputs/records.py: dataset files -> Records, so that every reader (JSONL, Parquet, CSV and HF save_to_disk folders)
gives the workers the same rows; bad rows -> Quarantined.

A shard is a range of row numbers in file order, so the same spec always cuts the same shards.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.inputs.chat import BatchRequest, Message, NotUsable, is_batch_line, parse_batch_line, parse_messages
from launcher.inputs.encodable import first_unencodable
from launcher.spec import FieldNames


@dataclass(frozen=True, slots=True)
class Record:
    row: int  # 0-based row number in the dataset file
    record_id: str
    user_id: str
    profile: Any
    history: Any
    context: Any
    raw: dict[str, Any]
    messages: tuple[Message, ...] | None = None  # chat messages: sent through the chat template as they are
    prompt: str | None = None  # a raw prompt (an OpenAI /v1/completions line): sent as is, no template
    request: BatchRequest | None = None  # an OpenAI batch line: its custom_id, url and per-request sampling


@dataclass(frozen=True, slots=True)
class Quarantined:
    row: int
    reason: str
    raw: str  # what the row looked like, cut to 500 characters


@dataclass(frozen=True, slots=True)
class BadRow:
    reason: str
    raw: str


Row = tuple[int, "dict[str, Any] | BadRow"]  # a parsed row, or why one did not parse


def detect_format(path: Path) -> str:
    if path.is_dir():
        if any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf"
        raise SpecError.one(
            str(path),
            "data.datasets.path",
            "a folder that is not a saved HF dataset",
            allowed="a .jsonl/.json, .parquet or .csv file, or a folder written by save_to_disk",
            fix="point at the file itself",
        )
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
    if suffix not in formats:
        raise SpecError.one(
            str(path),
            "data.datasets.path",
            f"unknown file type {suffix or '(none)'!r}",
            allowed=", ".join(formats),
            fix="rename the file or convert it to JSONL",
        )
    return formats[suffix]


def iter_rows(path: Path, start: int = 0, stop: int | None = None, split: str | None = None) -> Iterator[Row]:
    """Rows [start, stop) in file order. JSONL rows that do not parse come back as raw text (to quarantine).
    `split`: which split of a saved HF DatasetDict (refused when it has several and none is named)."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        yield from _jsonl_rows(path, start, stop)
    elif fmt == "csv":
        # surrogateescape: a byte that is not UTF-8 quarantines its row (inputs/encodable.py), not the whole file
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if stop is not None and i >= stop:
                    break
                if i >= start:
                    yield i, dict(row)
    elif fmt == "parquet":
        yield from _table_rows(_parquet_table(path), start, stop)
    else:
        yield from _hf_rows(path, start, stop, split)


def _jsonl_rows(path: Path, start: int, stop: int | None) -> Iterator[Row]:
    with path.open("rb") as f:
        i = -1
        for line in f:
            if not line.strip():
                continue  # blank lines are not rows: editors add them at the end
            i += 1
            if i < start:
                continue
            if stop is not None and i >= stop:
                break
            try:
                # strict=False: a raw tab or other control character inside a string is taken as the text it is
                obj = json.loads(line.decode("utf-8-sig"), strict=False)  # -sig: a BOM that starts the file
            except UnicodeDecodeError as exc:
                yield i, BadRow(f"not UTF-8 text: {exc}; save the file as UTF-8", _raw(line))
                continue
            except json.JSONDecodeError as exc:
                yield i, BadRow(f"invalid JSON: {exc}", _raw(line))
                continue
            except RecursionError:  # `[[[[...` 100,000 deep: the parser gives up, the row is bad, the run goes on
                yield i, BadRow(f"JSON nested deeper than {MAX_DEPTH} levels", _raw(line))
                continue
            if not isinstance(obj, dict):
                yield i, BadRow("not a JSON object", _raw(line))
            elif too_deep(obj):  # rendering, copying or dumping it again would recurse as deep
                yield i, BadRow(f"JSON nested deeper than {MAX_DEPTH} levels", _raw(line))
            else:
                yield i, obj


def _raw(line: bytes) -> str:
    return line.rstrip(b"\r\n")[:500].decode("utf-8", "replace")


# Levels of nested lists/objects a record may have. Real data has a handful; 400 leaves room for odd data (a 300-level
# record is read: tests/test_text_roundtrip.py, the hostile fault kind) and stays well under the 1,000 frames of
# Python's recursion limit that rendering, copying and dumping the record again use.
MAX_DEPTH = 400


def too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """More than `limit` levels of nesting (walked without recursion: the check must not crash on what it checks)."""
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def _parquet_table(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SpecError.one(
            str(path), "data.datasets.path", "reading Parquet needs pyarrow", fix="pip install 'launcher[parquet]'"
        ) from None
    return pq.read_table(path)


def _table_rows(table: Any, start: int, stop: int | None) -> Iterator[Row]:
    stop = table.num_rows if stop is None else min(stop, table.num_rows)
    for offset, row in enumerate(table.slice(start, max(0, stop - start)).to_pylist()):
        yield start + offset, row


def _hf_rows(path: Path, start: int, stop: int | None, split: str | None = None) -> Iterator[Row]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise SpecError.one(
            str(path),
            "data.datasets.path",
            "reading a saved HF dataset needs `datasets`",
            fix="pip install datasets, or export the dataset to JSONL",
        ) from None
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: the split named in the spec; one split needs no name
        splits = list(ds.keys())
        if split is None and len(splits) > 1:
            raise SpecError.one(
                str(path),
                "data.datasets.split",
                f"a DatasetDict with {len(splits)} splits and none named",
                allowed=", ".join(splits),
                fix=f"add `split: {splits[0]}` to this dataset",
            )
        if split is not None and split not in splits:
            raise SpecError.one(
                str(path),
                "data.datasets.split",
                f"no split {split!r} in this DatasetDict",
                allowed=", ".join(splits),
                fix="use one of the splits it has",
            )
        ds = ds[split or splits[0]]
    elif split is not None:
        raise SpecError.one(
            str(path),
            "data.datasets.split",
            f"split {split!r} named, but this is a single Dataset (no splits)",
            allowed="no split",
            fix="remove `split:` from this dataset",
        )
    stop = len(ds) if stop is None else min(stop, len(ds))
    for i in range(start, stop):
        yield i, dict(ds[i])


def count_rows(path: Path, split: str | None = None) -> int:
    """Rows in the dataset; fast enough for planning (a JSONL file is counted by its newlines)."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            return sum(1 for _ in csv.DictReader(f))
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SpecError.one(
                str(path), "data.datasets.path", "reading Parquet needs pyarrow", fix="pip install 'launcher[parquet]'"
            ) from None
        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(1 for _ in _hf_rows(path, 0, None, split))


def head_rows(path: Path, n: int, split: str | None = None) -> list[Row]:
    """The first n rows, cheaply (a Parquet file is not read whole)."""
    if detect_format(path) != "parquet":
        return list(iter_rows(path, 0, n, split))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SpecError.one(
            str(path), "data.datasets.path", "reading Parquet needs pyarrow", fix="pip install 'launcher[parquet]'"
        ) from None
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=n), None)
    return list(enumerate(batch.to_pylist())) if batch is not None else []


@dataclass(frozen=True)
class Sample:
    """What planning learns from the first rows of a dataset: are any of them usable, and why not."""

    rows: int
    usable: int
    bad: list[Quarantined]
    columns: list[str]


def sample_records(path: Path, fields: FieldNames, n: int = 200, split: str | None = None, fmt: str = "auto") -> Sample:
    """Read the first n rows as a worker would (bad rows are quarantined there, not errors)."""
    usable, bad, columns = 0, list[Quarantined](), list[str]()
    rows = head_rows(path, n, split)
    for row, obj in rows:
        if isinstance(obj, dict) and not columns:
            columns = [str(k) for k in obj]
        item = to_record(row, obj, fields, fmt)
        if isinstance(item, Record):
            usable += 1
        else:
            bad.append(item)
    return Sample(len(rows), usable, bad, columns)


def to_record(row: int, obj: dict[str, Any] | BadRow, fields: FieldNames, fmt: str = "auto") -> Record | Quarantined:
    """One dataset row -> a Record, or why it cannot be one. `fmt` "openai-batch": every row must be a batch line;
    "auto": a row with custom_id and body is read as one, any other as a record of the spec's columns."""
    if isinstance(obj, BadRow):
        return Quarantined(row, obj.reason, obj.raw)
    if (where := first_unencodable(obj)) is not None:
        return Quarantined(row, where, _short(obj))
    try:
        if fmt == "openai-batch" or is_batch_line(obj):
            return _batch_record(row, obj)
        return _column_record(row, obj, fields)
    except NotUsable as exc:
        return Quarantined(row, str(exc), _short(obj))


def _batch_record(row: int, obj: dict[str, Any]) -> Record:
    if not is_batch_line(obj):
        raise NotUsable("not an OpenAI batch request line ({custom_id, method, url, body})")
    request, messages, prompt = parse_batch_line(obj)
    rid = request.custom_id
    return Record(row, rid, rid, None, None, None, obj, messages, prompt, request)


def _column_record(row: int, obj: dict[str, Any], fields: FieldNames) -> Record:
    messages = parse_messages(obj[fields.messages]) if obj.get(fields.messages) is not None else None
    rid_value = obj.get(fields.record_id) if fields.record_id else None
    user = obj.get(fields.user_id)
    if (user is None or (isinstance(user, str) and not user.strip())) and messages and rid_value is not None:
        user = rid_value  # a chat dataset names records, not users: one output file per record
    if user is None or (isinstance(user, str) and not user.strip()):
        raise NotUsable(f"missing user id field {fields.user_id!r}")
    if not isinstance(user, (str, int)) or isinstance(user, bool):
        raise NotUsable(f"user id {fields.user_id!r} must be text or an integer, got {type(user).__name__}")
    rid = rid_value if fields.record_id else user
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise NotUsable(f"missing record id field {fields.record_id!r}")
    parts = {name: obj.get(getattr(fields, name)) for name in ("profile", "history", "context")}
    if messages is None and all(_empty(v) for v in parts.values()):
        why = f"profile, history, context and {fields.messages} are all empty: nothing to build a prompt from"
        raise NotUsable(why)
    return Record(row, str(rid), str(user), parts["profile"], parts["history"], parts["context"], obj, messages)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and len(value) == 0)


def _short(obj: dict[str, Any]) -> str:
    """The row as text for its quarantine line: cut to 500 characters, a lone surrogate kept as the text \ud800."""
    try:
        text = json.dumps(obj, ensure_ascii=False, default=str)[:500]
    except (RecursionError, ValueError):
        text = f"(a row with the fields {', '.join(map(str, list(obj)[:20]))}, too deep to show)"
    return text.encode("utf-8", "backslashreplace").decode()


def read_shard(
    path: Path, start: int, stop: int, fields: FieldNames, split: str | None = None, fmt: str = "auto"
) -> tuple[list[Record], list[Quarantined]]:
    records: list[Record] = []
    bad: list[Quarantined] = []
    for row, obj in iter_rows(path, start, stop, split):
        item = to_record(row, obj, fields, fmt)
        (records if isinstance(item, Record) else bad).append(item)  # type: ignore[arg-type]
    return records, bad


def first_rows(
    path: Path, fields: FieldNames, stop: int | None = None, split: str | None = None, fmt: str = "auto"
) -> dict[str, int]:
    """record id -> the first row holding it, over rows [0, stop). A later row with the same id is a duplicate
    wherever the shards are cut: ids are compared as text, so 1 and "1" are the same record."""
    first: dict[str, int] = {}
    for row, obj in iter_rows(path, 0, stop, split):
        item = to_record(row, obj, fields, fmt)
        if isinstance(item, Record):
            first.setdefault(item.record_id, row)
    return first


def duplicate_ids(
    path: Path, fields: FieldNames, stop: int | None = None, split: str | None = None, fmt: str = "auto"
) -> dict[str, int]:
    """record id -> how many rows share it (only ids held by more than one row)."""
    counts: dict[str, int] = {}
    for row, obj in iter_rows(path, 0, stop, split):
        item = to_record(row, obj, fields, fmt)
        if isinstance(item, Record):
            counts[item.record_id] = counts.get(item.record_id, 0) + 1
    return {k: v for k, v in counts.items() if v > 1}
