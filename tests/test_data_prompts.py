"""Readers (JSONL, Parquet, CSV, saved HF dataset), quarantine of bad rows, ablation templates, chat templates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.inputs.prompts import PARTS, make_builder, render_part
from launcher.inputs.records import Quarantined, Record, count_rows, read_shard
from launcher.spec import DataSpec, FieldNames

from .conftest import USERS, write_jsonl

FIELDS = FieldNames()


def _flat(rows: list[dict]) -> list[dict]:
    # CSV and Parquet hold flat columns: profile/history as text
    return [{**r, "profile": json.dumps(r["profile"]), "history": " | ".join(r["history"])} for r in rows]


def _write(kind: str, tmp_path: Path) -> Path:
    if kind == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", USERS)
    if kind == "csv":
        path = tmp_path / "d.csv"
        rows = _flat(USERS)
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(_flat(USERS)), path)
        return path
    from datasets import Dataset

    path = tmp_path / "hfds"
    Dataset.from_list(_flat(USERS)).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "hf"])
def test_readers_agree(kind: str, tmp_path: Path) -> None:
    path = _write(kind, tmp_path)
    assert count_rows(path) == len(USERS)
    records, bad = read_shard(path, 3, 7, FIELDS)
    assert bad == []
    assert [r.row for r in records] == [3, 4, 5, 6]
    assert [r.user_id for r in records] == ["u03", "u04", "u05", "u06"]
    assert all(r.context == f"Write about item {r.row}." for r in records)


def test_quarantine_reasons(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            USERS[0],
            '{"user_id": "cut',
            {"profile": "no id"},
            "[1, 2]",
            {"user_id": "x", "profile": "", "history": [], "context": None},
            {"user_id": {"nested": 1}, "context": "c"},
            USERS[1],
        ],
    )
    records, bad = read_shard(path, 0, 100, FIELDS)
    assert [r.user_id for r in records] == ["u00", "u01"]
    reasons = {q.row: q.reason for q in bad}
    assert reasons[1].startswith("invalid JSON")
    assert "missing user id" in reasons[2]
    assert reasons[3] == "not a JSON object"
    assert "all empty" in reasons[4]
    assert "must be text or an integer" in reasons[5]
    assert all(isinstance(q, Quarantined) and q.raw for q in bad)


def test_custom_field_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"uid": 5, "rid": "r1", "bio": "b", "past": ["p"], "now": "n"}])
    fields = FieldNames(user_id="uid", record_id="rid", profile="bio", history="past", context="now")
    (rec,), _ = read_shard(path, 0, 1, fields)
    assert (rec.user_id, rec.record_id, rec.profile, rec.history, rec.context) == ("5", "r1", "b", ["p"], "n")


def test_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    with pytest.raises(SpecError, match="unknown file type"):
        count_rows(p)


REC = Record(0, "r0", "u0", {"age": 30}, ["saw A", "saw B"], "Review film C.", {"extra": "E"})


def _data(**kw: object) -> DataSpec:
    return DataSpec.model_validate({"datasets": [{"name": "d", "path": "/x"}], **kw})


@pytest.mark.parametrize("ablation", sorted(PARTS))
def test_builtin_ablations_show_exactly_their_parts(ablation: str) -> None:
    text = make_builder(_data(ablation_configs=[ablation]), ablation, None).build(REC)
    shown = {"profile": "age: 30" in text, "history": "- saw A" in text, "context": "Review film C." in text}
    assert {k for k, v in shown.items() if v} == set(PARTS[ablation]), text


def test_custom_template_text_and_file(tmp_path: Path) -> None:
    tpl = tmp_path / "t.j2"
    tpl.write_text("U={{ user_id }} C={{ context }} X={{ record['extra'] }}")
    data = _data(ablation_configs=["a", "b"], templates={"a": {"text": "only {{ profile }}"}, "b": {"file": str(tpl)}})
    assert make_builder(data, "a", None).build(REC) == "only age: 30"
    assert make_builder(data, "b", None).build(REC) == "U=u0 C=Review film C. X=E"


def test_template_errors_fail_early() -> None:
    with pytest.raises(SpecError, match="syntax error"):
        make_builder(_data(ablation_configs=["a"], templates={"a": {"text": "{{ oops"}}), "a", None)
    with pytest.raises(SpecError, match="unknown variable"):
        make_builder(_data(ablation_configs=["a"], templates={"a": {"text": "{{ profle }}"}}), "a", None)


def test_preamble_and_chat_template(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from launcher.job.prepare import chat_formatter

    scenario = tmp_path / "s.txt"
    scenario.write_text("You review films.")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    data = _data(ablation_configs=["context_only"], preamble=str(scenario), system_prompt="Be brief.")
    text = make_builder(data, "context_only", chat_formatter(tok)).build(REC)
    assert text.startswith("<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nYou review films.")
    assert text.endswith("<|assistant|>\n") and "Review film C." in text
    plain = make_builder(_data(ablation_configs=["full"], chat_template=False), "full", chat_formatter(tok)).build(REC)
    assert "<|user|>" not in plain


def test_render_part_shapes() -> None:
    assert render_part({"a": 1, "b": [1, 2]}) == "a: 1\nb: - 1\n- 2"
    assert render_part(["x", "y"]) == "- x\n- y"
    assert render_part(None) == "" and render_part("  t ") == "t"
    assert render_part({"e": {}, "l": [], "t": (" x ",), "u": "ü\n"}) == "e: \nl: \nt: - x\nu: ü"


def test_render_part_of_a_record_as_deep_as_allowed_does_not_recurse() -> None:
    """A worker renders with submitit's, the job's and the prep thread's frames below it: a profile nested
    MAX_DEPTH levels must render with any number of frames already used (the campaign's hostile kind lost one)."""
    import sys

    from launcher.inputs.records import MAX_DEPTH

    value: object = "leaf"
    for _ in range(MAX_DEPTH):
        value = [{"k": value}]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)  # as if the caller were already deep in its stack
    try:
        text = render_part(value)
    finally:
        sys.setrecursionlimit(limit)
    assert text.count("- k: ") == MAX_DEPTH and text.endswith("leaf")
