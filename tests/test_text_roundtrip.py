"""Any text round-trips (issue 26): whatever a dataset holds or a model generates comes back byte-identical in
samples.jsonl, samples.parquet, users/*.json and `launcher batch`'s output; text that cannot be encoded quarantines
its record alone; per-user file names never collide.

In-process and fast (no engine): chunks are written as workers write them (UnitDir.write_chunk), then the real
gather and the real batch writer run. Property tests (hypothesis) draw the text; derandomized, so CI sees the same
examples every time.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.gather import gather
from launcher.gather.samples import read_samples
from launcher.inputs.records import MAX_DEPTH, read_shard
from launcher.plan import Plan, expand
from launcher.plan.persist import save_plan
from launcher.spec import FieldNames, load_spec
from launcher.store import (
    BadLine,
    OutputRow,
    encode_line,
    encode_lines,
    parse_lines,
    read_jsonl,
    safe_filename,
    write_json_atomic,
)
from launcher.store.names import MAX_STEM_BYTES, unescape_stem
from launcher.store.unit_dir import chunk_listing
from launcher.submit.openai_batch import batch_spec, write_output

from .conftest import make_spec, write_jsonl

# Every character str.splitlines() breaks a line at, NUL and other controls, a BOM, astral characters, a lone CR.
HOSTILE = ["\u0085", "\u2028", "\u2029", "\x1c", "\x1d", "\x1e", "\r", "\n", "\r\n", "\v", "\f", "\x00", "\x7f",
           "\ufeff", "\U0001f600", "\U00010348", "\t", "\\", '"', "\u200b"]  # fmt: skip
ENCODABLE = st.characters(exclude_categories=("Cs",))  # every code point but the lone surrogates
TEXT = st.lists(st.one_of(st.sampled_from(HOSTILE), ENCODABLE), max_size=30).map("".join)
# derandomize: the same examples on every run (CI is reproducible); no example database left in the tree.
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
GATHERS = settings(PROPERTY, max_examples=25)  # a plan and a gather each: ~0.1 s of CPU per example


# ---- the one JSONL reader ------------------------------------------------------------------------------------------
def test_every_line_separator_stays_inside_its_line() -> None:
    """What broke a 1,500-line batch: a sample holding U+0085 was cut in two by str.splitlines() at gather."""
    rows = [{"row": i, "text": f"a{h}b"} for i, h in enumerate(HOSTILE)]
    data = encode_lines(rows)
    assert data.count(b"\n") == len(rows)  # one line per row: JSON escapes \n, \r and every other control
    assert list(parse_lines(data)) == rows
    assert len("".join(r["text"] for r in rows).splitlines()) > 1  # what the old reader would have split on


@PROPERTY
@given(st.lists(st.dictionaries(TEXT, TEXT, max_size=4), max_size=5))
def test_any_encodable_text_round_trips_through_jsonl(rows: list[dict[str, str]]) -> None:
    assert list(parse_lines(encode_lines(rows))) == rows


@PROPERTY
@given(TEXT, st.sampled_from(["\ud800", "\udfff", "\udc80"]), TEXT)
def test_a_lone_surrogate_is_refused_or_escaped_exactly(head: str, lone: str, tail: str) -> None:
    """A chunk must never hold one (strict raises); a quarantine line keeps it exactly, as a JSON escape."""
    row = {"raw": head + lone + tail}
    with pytest.raises(UnicodeEncodeError):
        encode_line(row)
    line = encode_line(row, lone_surrogates="escape")
    line.decode("utf-8")  # valid UTF-8 all the same
    assert list(parse_lines(line)) == [row]


def test_a_line_that_is_not_json_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(encode_line({"row": 0}) + b'{"row": 1, "oops\n')
    with pytest.raises(BadLine, match=r"q\.jsonl:2: not a JSON line"):
        list(read_jsonl(path))


DEEP_OK = f"deep{MAX_DEPTH - 1}"


# ---- datasets: a hostile row fails alone ---------------------------------------------------------------------------
def test_hostile_dataset_rows_fail_alone(tmp_path: Path) -> None:
    """Each of these rows is quarantined with its reason or read whole; never the file, never a neighbour."""
    # as deep as a record may be (inputs/records.py: MAX_DEPTH levels); one level more is quarantined, as "deep" is
    deep_ok = json.dumps({"user_id": DEEP_OK, "context": "x", "profile": _nested(MAX_DEPTH - 1)})
    lines = [
        json.dumps({"user_id": "good", "context": "hello"}).encode(),
        b'{"user_id": "lone", "context": "a \\ud800 b"}',  # an escaped lone surrogate: json.loads accepts it
        b'{"user_id": "badbyte", "context": "caf\xe9"}',  # latin-1, not UTF-8
        ('{"user_id": "deep", "context": "x", "profile": ' + "[" * 100_000 + "]" * 100_000 + "}").encode(),
        deep_ok.encode(),
        '{"user_id": "tab", "context": "raw\ttab and \u2028 and \u0085"}'.encode(),  # a raw tab: not strict JSON
        json.dumps({"user_id": "big", "context": "z" * 10_000_000}).encode(),  # a 10 MB field
        json.dumps({"user_id": "nul\x00id", "context": "NUL \x00 inside"}).encode(),
        b'{"user_id": "\\ud83d\\ude00 pair", "context": "an escaped surrogate PAIR is fine"}',
        b'{"user_id": "keylone", "context": "x", "\\udc80": 1}',
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, bad = read_shard(path, 0, len(lines), FieldNames())
    good = {r.user_id: r for r in records}
    assert set(good) == {"good", DEEP_OK, "tab", "big", "nul\x00id", "\U0001f600 pair"}
    assert good["tab"].context == "raw\ttab and \u2028 and \u0085" and len(good["big"].context) == 10_000_000
    why = {q.row: q.reason for q in bad}
    assert sorted(why) == [1, 2, 3, 9]
    assert "U+D800" in why[1] and "lone surrogate" in why[1]
    assert why[2].startswith("not UTF-8 text")
    assert "nested deeper" in why[3]
    assert "U+DC80" in why[9] and "key" in why[9]
    for q in bad:  # what a quarantine line holds can be written, exactly
        encode_line({"row": q.row, "reason": q.reason, "raw": q.raw}, lone_surrogates="escape").decode("utf-8")
        assert len(q.raw) <= 500


def test_a_csv_byte_that_is_not_utf8_quarantines_its_row_only(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"user_id,context\nu1,fine\nu2,caf\xe9\nu3,also fine\n")
    records, bad = read_shard(path, 0, 3, FieldNames())
    assert [r.user_id for r in records] == ["u1", "u3"]
    assert [q.row for q in bad] == [1] and "U+DCE9" in bad[0].reason and "not UTF-8" in bad[0].reason


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


# ---- file names: injective -----------------------------------------------------------------------------------------
ATTACK_IDS = [
    "",
    ".",
    "..",
    "...",
    ".hidden",
    "CON",
    "con",
    "NUL",
    "nul\x00",
    "a/b",
    "a_b",
    "a%2Fb",
    "%",
    "%%",
    "a" * 300,
    "a" * 300 + "b",
    "x" * 100 + "1" + "y" * 150,
    "x" * 100 + "2" + "y" * 150,
    "ü" * 200,
    "\ud800",
    "\udc80",
    "../../etc/passwd",
    "manifest",
    "%6Danifest",
    "samples",
    "inference_summary",
]


def test_old_collisions_and_attacks_get_distinct_files(tmp_path: Path) -> None:
    """Every id its own file, also the pairs the old scheme merged: 'a/b' and 'a_b-<its hash>', and two ids that
    differ only after the 100 characters it kept."""
    import hashlib

    old_collision = "a_b-" + hashlib.sha256(b"a/b").hexdigest()[:8]
    ids = [*ATTACK_IDS, old_collision]
    for flat in (False, True):
        reserved = frozenset({"samples", "quarantine", "inference_summary", "manifest"}) if flat else frozenset()
        folder = tmp_path / ("flat" if flat else "users")
        folder.mkdir()
        for user in ids:
            stem = safe_filename(user, reserved)
            assert "/" not in stem and "\x00" not in stem and not stem.startswith(".") and stem not in reserved
            assert len(stem.encode()) <= MAX_STEM_BYTES
            path = folder / f"{stem}.json"
            assert not path.exists(), f"{user!r} collides with another id as {stem}"
            path.write_text("{}")
            assert unescape_stem(stem) in (user, None)
    assert safe_filename("cham003") == "cham003" and safe_filename("a.b-c_D9") == "a.b-c_D9"  # old names kept
    assert safe_filename("CON") == "CON" and safe_filename("..") == "%2E."


@settings(PROPERTY, max_examples=150)
@given(st.text(max_size=140), st.text(max_size=140))
def test_distinct_ids_never_share_a_file(a: str, b: str) -> None:
    a_surr, b_surr = a + "\ud800", b + "\udc80"  # lone surrogates too: a name needs no encodable id
    for x, y in ((a, b), (a_surr, b_surr), (a, a + "x"), (a * 4, a * 4 + "_")):
        if x != y:
            assert safe_filename(x) != safe_filename(y)
    assert safe_filename(a) == a or "%" in safe_filename(a)


# ---- chunks -> gather -> every output format -----------------------------------------------------------------------
def _fake_model(folder: Path) -> Path:
    """What planning reads of a model (config, a weights file, a tokenizer file): gather never loads one."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 100,
              "intermediate_size": 128, "max_position_embeddings": 4096, "torch_dtype": "float32"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _finish_units(plan: Plan, rows: list[OutputRow]) -> None:
    """Every unit written and marked done the way a worker does it (chunks of 2, then done.json), in a run folder a
    submit made (save_plan: only a submit makes it, store/run_dir.py)."""
    save_plan(plan)
    shutil.rmtree(plan.run.units, ignore_errors=True)
    for unit in plan.units:
        udir = plan.run.unit(unit.unit_id)
        mine = [r for r in rows if unit.start <= r["row"] < unit.stop]
        for seq, i in enumerate(range(0, len(mine), 2)):
            udir.write_chunk(0, seq, mine[i : i + 2])
        udir.write_quarantine([])
        done = {"unit_id": unit.unit_id, "records": len(mine), "quarantined": 0, "generation": 0}
        udir.write_done({**done, "chunks": chunk_listing(udir.scan(keep_rows=False))})  # type: ignore[typeddict-item]


def _row(row: int, rid: str, user: str, dataset: str, prompt: str, samples: list[str]) -> OutputRow:
    return OutputRow(row=row, record_id=rid, user_id=user, dataset=dataset, ablation="full", prompt=prompt,
                     generated_samples=samples, prompt_tokens=3, sample_tokens=[1] * len(samples),
                     finish_reasons=["stop"] * len(samples), seed=row)  # fmt: skip


def _users_files(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in folder.glob("*.json"):
        obj = json.loads(path.read_bytes())
        if "generated_samples" in obj:
            out[obj["user_id"]] = obj
    return out


N_ROWS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_model(tmp_path_factory.mktemp("text") / "model").parent


@GATHERS
@given(
    ids=st.lists(TEXT, min_size=N_ROWS, max_size=N_ROWS),
    prompts=st.lists(TEXT, min_size=N_ROWS, max_size=N_ROWS),
    samples=st.lists(st.lists(TEXT, min_size=2, max_size=2), min_size=N_ROWS, max_size=N_ROWS),
)
def test_batch_text_round_trips_to_samples_users_and_batch_output(
    world: Path, ids: list[str], prompts: list[str], samples: list[list[str]]
) -> None:
    """custom_ids (= record and user ids) and generated text, drawn at random among every Unicode character: the
    gathered samples.jsonl, users/<id>.json and the batch output hold exactly them."""
    ids = [f"{i}{x}" for i, x in enumerate(ids)]  # a custom_id must hold something besides blanks; unique
    folder = world / "batch"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": p or "x"}]}}
        for cid, p in zip(ids, prompts, strict=True)
    ]  # fmt: skip
    requests = folder / "in.jsonl"
    requests.write_bytes(encode_lines(lines))
    batch = batch_spec(
        requests, folder / "out.jsonl", str(world / "model"), None, ["output.per_user_json=true", "data.num_samples=2"]
    )
    plan = expand(batch.spec)
    rows = [_row(i, cid, cid, "batch", p, s) for i, (cid, p, s) in enumerate(zip(ids, prompts, samples, strict=True))]
    _finish_units(plan, rows)
    (report,) = gather(plan)
    assert report.records == N_ROWS
    gathered = list(read_samples(report.out_dir))
    assert [(r["record_id"], r["prompt"], r["generated_samples"]) for r in gathered] == [
        (cid, p, s) for cid, p, s in zip(ids, prompts, samples, strict=True)
    ]
    users = _users_files(report.out_dir / "users")
    assert {u: users[u]["generated_samples"] for u in users} == dict(zip(ids, samples, strict=True))
    assert len(list((report.out_dir / "users").iterdir())) == N_ROWS  # one file per id: none shared
    ok, errors = write_output(plan, requests, folder / "out.jsonl")
    assert (ok, errors) == (N_ROWS, 0)
    out = list(read_jsonl(folder / "out.jsonl"))
    assert [o["custom_id"] for o in out] == ids
    assert [[c["message"]["content"] for c in o["response"]["body"]["choices"]] for o in out] == samples


@GATHERS
@given(
    users=st.lists(st.one_of(TEXT, st.sampled_from(["manifest", "samples", "%6Danifest", ".."])), min_size=N_ROWS,
                   max_size=N_ROWS),
    samples=st.lists(st.lists(TEXT, min_size=2, max_size=2), min_size=N_ROWS, max_size=N_ROWS),
)  # fmt: skip
def test_parquet_and_flat_user_files_round_trip(world: Path, users: list[str], samples: list[list[str]]) -> None:
    """The parquet samples file and `launcher run`'s flat layout (users beside samples.parquet and manifest.json):
    the same text back, one file per distinct user, none overwriting the run's own files."""
    folder = world / "parquet"
    shutil.rmtree(folder, ignore_errors=True)
    data = write_jsonl(folder / "d.jsonl", [{"user_id": f"p{i}", "context": "c"} for i in range(N_ROWS)])
    spec = make_spec(
        folder, world / "model", data, output={"dir": str(folder / "out"), "format": "parquet", "per_user_json": True}
    )
    plan = expand(load_spec(spec))
    rows = [_row(i, f"r{i}", u, "users", "p", s) for i, (u, s) in enumerate(zip(users, samples, strict=True))]
    _finish_units(plan, rows)
    flat = folder / "flat"
    assert len(gather(plan, dest=flat, flat=True)) == 1
    gathered = list(read_samples(flat))
    assert [(r["user_id"], r["generated_samples"]) for r in gathered] == list(zip(users, samples, strict=True))
    by_user: dict[str, list[str]] = {}
    for u, s in zip(users, samples, strict=True):
        by_user.setdefault(u, []).extend(s)
    found = _users_files(flat)
    assert {u: found[u]["generated_samples"] for u in found} == by_user
    assert json.loads((flat / "manifest.json").read_bytes())["records"] == N_ROWS  # not overwritten by a user


# ---- an earlier gather's files under old names -----------------------------------------------------------------
def test_a_gather_removes_the_files_an_earlier_gather_listed_and_it_does_not_write(world: Path) -> None:
    """Outputs gathered before the file names became injective (users/a_b-<hash>.json): the next gather writes
    users/a%2Fb.json and removes the old file, named in what it prints; a file the launcher never wrote stays."""
    folder = world / "stale"
    data = write_jsonl(folder / "d.jsonl", [{"user_id": f"p{i}", "context": "c"} for i in range(2)])
    spec = make_spec(folder, world / "model", data, output={"dir": str(folder / "out"), "per_user_json": True})
    plan = expand(load_spec(spec))
    _finish_units(plan, [_row(i, f"r{i}", u, "users", "p", ["s", "t"]) for i, u in enumerate(["a/b", "ok"])])
    out = plan.run.final_dir("users", "full")
    (out / "users").mkdir(parents=True)
    old = out / "users" / "a_b-6b6c7b8b.json"
    old.write_text('{"user_id": "a/b"}')
    mine = out / "users" / "notes.json"
    mine.write_text("a user's own file")
    listed = {"users/a_b-6b6c7b8b.json": {}, "users/ok.json": {}, "samples.jsonl": {}, "../../escape.json": {}}
    (out / "manifest.json").write_text(json.dumps({"files": listed}))
    (report,) = gather(plan)
    assert report.files_removed == ["users/a_b-6b6c7b8b.json"]
    assert not old.exists() and mine.exists() and (out / "users" / "a%2Fb.json").exists()
    assert sorted(p.name for p in (out / "users").iterdir()) == ["a%2Fb.json", "notes.json", "ok.json"]
    (again,) = gather(plan)
    assert again.files_removed == [] and again.files_written == []  # a second gather: nothing to do


def test_safe_names_survive_the_platform_limits(tmp_path: Path) -> None:
    """The longest stem, as <stem>.json and as the writer's temporary sibling, fits a file name (255 bytes)."""
    stem = safe_filename("\U0001f600" * 500)
    assert len(stem.encode()) <= MAX_STEM_BYTES and "%%" in stem
    path = tmp_path / f"{stem}.json"
    write_json_atomic(path, {"ok": True})
    assert json.loads(path.read_bytes()) == {"ok": True}
    assert len(f".{path.name}.{os.uname().nodename}.{2**22}.{2**48}.tmp") <= 255
    assert set(stem) <= set(string.ascii_letters + string.digits + "._-%")
