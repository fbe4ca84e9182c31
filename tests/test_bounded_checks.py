"""Bounded work on anything hostile (issue 26, part 5): every check that runs on data or samples ends, in bounded time
and memory, with a clear reason: regexes on RE2, JSON schemas with local refs only, JSON nested 100,000 deep, templates
that loop without end (one record quarantined, the others prepared), a damaged run history. A chat template's clock
reads the run's recorded date. In-process, on the tiny model's real tokenizer: ~10 s in all."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from launcher.gather.structured import structured_figures
from launcher.inputs.guard import PromptClock
from launcher.inputs.records import BadRow, iter_rows
from launcher.spec.sampling import StructuredSpec
from launcher.store import read_json

from .conftest import USERS, make_spec, write_jsonl

CATASTROPHIC = "(a+)+$"  # Python's re: ~2^n steps on "a" * n + "b"


def rows_of(*texts: str) -> list[dict[str, Any]]:
    return [{"generated_samples": list(texts), "finish_reasons": ["stop"] * len(texts)}]


def test_a_backtracking_regex_is_judged_in_linear_time() -> None:
    spec = StructuredSpec(regex=CATASTROPHIC)
    t0 = time.perf_counter()
    fig = structured_figures(spec, rows_of("a" * 100_000 + "b", "aaaa", "a\u2028a"))
    assert time.perf_counter() - t0 < 2  # Python's re takes minutes on 30 a's and a b
    assert fig is not None and fig["samples"] == 3 and fig["conforming"] == 1


def test_schema_checks_never_fetch_never_crash_and_stay_bounded() -> None:
    # a pattern inside the schema runs on RE2 too; a sample nested 100,000 deep is simply not conforming
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": CATASTROPHIC}}}
    deep = "[" * 100_000 + "]" * 100_000
    t0 = time.perf_counter()
    fig = structured_figures(
        StructuredSpec(json_schema=schema), rows_of('{"a": "' + "a" * 50_000 + 'b"}', deep, '{"a": "aa"}')
    )
    assert fig is not None and fig["conforming"] == 1 and time.perf_counter() - t0 < 2
    # quadratic work (uniqueItems over objects) stops at the per-sample bound, counted as not judged
    big = json.dumps([{"k": i} for i in range(20_000)])
    fig = structured_figures(StructuredSpec(json_schema={"type": "array", "uniqueItems": True}), rows_of(big))
    assert fig is not None and fig["conforming"] == 0 and fig["not_judged"]["samples"] == 1
    assert "did not finish" in fig["not_judged"]["first_reason"]
    # refs that leave the schema are refused when the spec loads (network, files), and so is a cycle
    for bad in ({"$ref": "http://127.0.0.1:9/s.json"}, {"$ref": "file:///etc/passwd"}, {"anyOf": [{"$ref": "#"}]}):
        with pytest.raises(ValueError, match="cannot be checked safely"):
            StructuredSpec(json_schema=bad)
    tree = {
        "$defs": {"n": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}}
    }
    fig = structured_figures(StructuredSpec(json_schema={**tree, "$ref": "#/$defs/n"}),
                             rows_of('{"kids": [{"kids": []}]}', '{"kids": [1]}'))  # fmt: skip
    assert fig is not None and fig["conforming"] == 1  # a recursive schema that reads the sample is fine


def test_json_nested_without_end_is_a_bad_row_not_a_crash(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [USERS[0], "[" * 100_000 + "]" * 100_000, {"user_id": "deep", "context": "[" * 500 + "]" * 500}, USERS[1]],
    )
    data.write_text(
        data.read_text().replace('"[[[', "[[[").replace(']]]"', "]]]")
    )  # row 2: a real 500-deep value (past MAX_DEPTH)
    rows = list(iter_rows(data))
    assert [isinstance(obj, BadRow) for _, obj in rows] == [False, True, True, False]
    assert all("nested deeper than" in obj.reason for _, obj in rows if isinstance(obj, BadRow))
    (tmp_path / "state.json").write_text("[" * 100_000)
    assert read_json(tmp_path / "state.json") == {}  # a run file damaged that way reads as missing


def test_a_template_that_loops_on_one_record_quarantines_that_record_only(tmp_path: Path, tiny_model: Path) -> None:
    from launcher.job.prepare import Preparer, load_tokenizer
    from launcher.plan import expand
    from launcher.spec import load_spec

    loop = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    text = "{% if user_id == 'u03' %}" + loop + "{% endif %}{{ context }}"
    data = write_jsonl(tmp_path / "d.jsonl", USERS[:5])
    spec = load_spec(
        make_spec(
            tmp_path, tiny_model, data, data={"ablation_configs": ["mine"], "templates": {"mine": {"text": text}}}
        )
    )
    plan = expand(spec)  # the plan's dry render (a probe record) passes: only u03's data reaches the loop
    t0 = time.perf_counter()
    prepared = Preparer(spec, load_tokenizer(spec)).prepare(plan.units[0])
    assert time.perf_counter() - t0 < 15
    assert [q.row for q in prepared.quarantined] == [3] and "did not finish within" in prepared.quarantined[0].reason
    assert sorted(prepared.token_ids) == [0, 1, 2, 4]


def test_a_chat_templates_clock_reads_the_recorded_date(tmp_path: Path, tiny_model: Path) -> None:
    from launcher.job.prepare import chat_formatter, load_tokenizer
    from launcher.spec import load_spec

    template = "{{ strftime_now('%d %b %Y') }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    spec = load_spec(make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:1]),
                               data={"chat_template": template}))  # fmt: skip
    tok = load_tokenizer(spec)
    recorded = PromptClock.from_submitted_at("2024-07-26T23:30:00-0700")
    assert recorded is not None
    pinned = chat_formatter(tok, spec.data, recorded)
    assert pinned is not None and pinned([{"role": "user", "content": "hi"}]) == "26 Jul 2024|hi"  # its zone, any day
    today = chat_formatter(tok, spec.data)
    assert today is not None and today([{"role": "user", "content": "hi"}]).startswith(time.strftime("%d %b %Y"))


def test_a_damaged_history_is_a_warning_never_a_failure(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from launcher.plan import expand
    from launcher.plan.estimate import MAX_HISTORY_BYTES, estimate, record_run
    from launcher.spec import load_spec

    plan = expand(load_spec(make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:2]))))
    history = tmp_path / "history.json"
    monkeypatch.setenv("LAUNCHER_HISTORY", str(history))
    headline = {"generation_wall_s": 2.0, "output_tokens": 100, "gpus": 1}
    worker: Any = {"engine": {"gpu_name": None}, "backend": "hf"}
    damaged = {
        "not json": b"{not json",
        "nested": b"[" * 100_000,
        "a list": b"[1, 2]",
        "runs a list": b'{"runs": [1]}',
        "bad entries": json.dumps({"runs": {"a": 1, "b": {"shape": "x", "tokens_per_gpu_s": "fast"}}}).encode(),
        "too big": b" " * (MAX_HISTORY_BYTES + 1),
    }
    for what, content in damaged.items():
        history.write_bytes(content)
        caplog.clear()
        est, why = estimate(plan)
        assert est is None and "no earlier run" in why, what
        record_run(plan, headline, worker)  # never raises
        assert caplog.records, f"{what}: no warning"
        if what == "bad entries":  # a history with damaged entries: those dropped, this run's added
            assert list(json.loads(history.read_text())["runs"]) == [plan.run.run_id]
        else:  # not a history at all: left as it was
            assert history.read_bytes() == content, what
    history.unlink()
    history.mkdir()  # a folder where the file should be
    assert estimate(plan)[0] is None
    record_run(plan, headline, worker)
    assert history.is_dir() and not os.listdir(history)


def test_settings_that_would_quarantine_every_record_are_refused_at_plan(tmp_path: Path, tiny_model: Path) -> None:
    """Prompts counted with the model's tokenizer.json: with max_tokens they overflow the context on every first row."""
    from launcher.errors import SpecError
    from launcher.plan.preflight import check_all
    from launcher.spec import load_spec

    data = write_jsonl(tmp_path / "d.jsonl", USERS)
    fits = make_spec(tmp_path, tiny_model, data, name="fits", model={"max_model_len": 512}, sampling={"max_tokens": 64})
    check_all(load_spec(fits))
    overflows = make_spec(tmp_path, tiny_model, data, name="over", model={"max_model_len": 64},
                          sampling={"max_tokens": 60})  # fmt: skip
    with pytest.raises(SpecError) as exc:
        check_all(load_spec(overflows))
    text = str(exc.value)
    assert "sampling.max_tokens" in text and "every record would be quarantined" in text and "over.yaml:" in text


def test_a_damaged_prompt_stats_cache_is_measured_again(tmp_path: Path, tiny_model: Path) -> None:
    from launcher.job.prompt_stats import prompt_stats
    from launcher.plan import expand
    from launcher.spec import load_spec

    plan = expand(load_spec(make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:3]))))
    plan.run.root.mkdir(parents=True)

    class Lengths:  # what prompt_stats asks of a Preparer
        def stats_of(self, units: Any, tick: Any = None) -> tuple[dict[str, list[float]], bool]:
            return {u.unit_id: [2, 12, 7] for u in units}, False

    for damaged in ('{"units": [1, 2]}', '{"units": {"x": "abc", "y": [1]}}', "[" * 100_000):
        plan.run.prompt_stats.write_text(damaged)
        stats = prompt_stats(plan, Lengths())  # type: ignore[arg-type]
        assert stats[plan.units[0].unit_id] == [2, 12, 7]


def test_a_deadline_whose_first_exception_is_swallowed_still_stops_the_work() -> None:
    """C code may swallow the hook's first exception and go on calling Python (CI: jsonschema's uniqueItems ran its
    whole 310 s past a 1 s bound). Here most of the work sits in a try that swallows BoundExceeded, as that C code
    did; the deadline must still stop the block at the next call made outside it."""
    from launcher.inputs.bounded import BoundExceeded, deadline

    def step(n: int) -> int:
        return n + 1

    swallowed = 0
    t0 = time.monotonic()
    with pytest.raises(BoundExceeded, match=r"did not finish within 0\.2 s"), deadline(0.2, "the work"):
        while time.monotonic() - t0 < 20:
            try:
                for i in range(2_000):
                    step(i)
            except BoundExceeded:
                swallowed += 1
            step(0)  # outside the swallowing part
    assert swallowed >= 1 and time.monotonic() - t0 < 5
    assert sys.getprofile() is None  # the hook is gone once the block ends
