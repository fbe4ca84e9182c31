"""Issue 28, the decisions behind a fast start, without starting an engine: sizing from a bound (before any prompt
is tokenized), the start-up switches and what each changes in vLLM's arguments, the host-side start-up thread and
its gate, the weights swap's decision and the sweep's grouping, the JIT caches beside the compile cache, the
bench's issue-28 ratios. The engine-level test (one vLLM CPU engine) is in test_vllm_cpu.py."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from launcher.engines.base import Workload
from launcher.engines.startup import StartupSwitches, release_after_fork
from launcher.engines.vllm.sizing import fit_token_limit, size_vllm
from launcher.engines.vllm.weight_swap import swap_decision
from launcher.inputs.model import ModelShape
from launcher.job.host_prep import HostPrep, LazyTokenizer
from launcher.plan.layout import GiB, GpuInfo, ParallelLayout
from launcher.spec import ModelSpec, SamplingSpec

from .conftest import write_jsonl

LLAMA8B = ModelShape(
    ("LlamaForCausalLM",), 32, 4096, 32, 8, 128, 14336, 128256, 8192, "bfloat16", 16_060_522_496, "estimated"
)
LONG8B = ModelShape(
    ("LlamaForCausalLM",), 32, 4096, 32, 8, 128, 14336, 128256, 131072, "bfloat16", 16_060_522_496, "estimated"
)
H100 = GpuInfo("NVIDIA H100 80GB HBM3", 81559 * 1024 * 1024)
L4 = GpuInfo("NVIDIA L4", 24 * GiB)
TP1 = ParallelLayout(1, 1, ("0",), "test")


# -- sizing before the prompts are known ------------------------------------------------------------------------


def test_engine_settings_from_the_bound_do_not_depend_on_prompts_or_cell_count() -> None:
    spec = ModelSpec(path="m")
    one_cell = size_vllm(spec, LLAMA8B, TP1, H100, Workload.bound(200, 256, 5, 8192))
    sweep = size_vllm(spec, LLAMA8B, TP1, H100, Workload.bound(2400, 256, 5, 8192))
    assert one_cell.kwargs == sweep.kwargs  # one cell finds the sweep's compile cache (same key)
    kw = one_cell.kwargs
    assert kw["max_model_len"] == 8192 and "known before any prompt is tokenized" in one_cell.reasons["max_model_len"]
    sizes = kw["compilation_config"]["cudagraph_capture_sizes"]
    assert max(sizes) == kw["max_num_seqs"]  # graphs up to what is admitted, not 2 x max_num_seqs
    assert kw["compilation_config"]["cudagraph_mode"] == "FULL_DECODE_ONLY"  # one capture pass, not two
    # a bound never sizes the batch smaller than measured prompts would (prompts are sized at 0 tokens)
    known = size_vllm(spec, LLAMA8B, TP1, H100, Workload.of([2000] * 2400, 512, 5))
    bound = size_vllm(spec, LLAMA8B, TP1, H100, Workload.bound(2400, 512, 5, 8192))
    assert bound.kwargs["max_num_seqs"] >= known.kwargs["max_num_seqs"]
    assert "not measured before the start" in bound.reasons["max_num_seqs"]
    small = size_vllm(spec, LLAMA8B, TP1, H100, Workload.bound(4, 256, 5, 8192))
    assert small.kwargs["max_num_seqs"] <= 32  # 20 sequences: a small job still gets a small engine


def test_record_limit_is_capped_where_the_kv_cache_cannot_hold_the_models_context() -> None:
    spec = ModelSpec(path="m")
    assert fit_token_limit(8192, spec, LLAMA8B, TP1, H100) == (8192, None)
    limit, why = fit_token_limit(131072, spec, LONG8B, TP1, L4)
    assert limit is not None and 1024 <= limit < 131072 and limit & (limit - 1) == 0
    assert why is not None and "set model.max_model_len" in why and "NVIDIA L4" in why
    assert fit_token_limit(131072, spec.model_copy(update={"max_model_len": 100_000}), LONG8B, TP1, L4)[1] is None
    assert fit_token_limit(131072, spec, LONG8B, TP1, None) == (131072, None)  # no GPU: nothing to cap at


# -- what each switch does to vLLM's arguments -------------------------------------------------------------------


def _applied(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, off: str = "", **sampling: object) -> tuple:
    from launcher.engines.vllm.engine import VLLMEngine
    from launcher.engines.vllm.settings import apply_startup_settings

    monkeypatch.setenv("LAUNCHER_STARTUP_OFF", off)
    monkeypatch.delenv("VLLM_ENABLE_STARTUP_PLAN", raising=False)
    monkeypatch.delenv("LAUNCHER_WEIGHTS_LOADER", raising=False)
    (tmp_path / "model.safetensors").write_bytes(b"")
    engine = VLLMEngine(ModelSpec(path=str(tmp_path)), SamplingSpec(**sampling), 5)  # type: ignore[arg-type]
    engine.loras, engine.own_request_settings = {}, False
    settings = size_vllm(engine.model, LLAMA8B, TP1, H100, Workload.bound(2400, 256, 5, 8192))
    kwargs = dict(settings.kwargs)
    skip = apply_startup_settings(engine, kwargs, settings, on_gpu=True)
    return engine, kwargs, settings, skip


def test_switches_on_by_default_and_each_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, kwargs, settings, skip = _applied(monkeypatch, tmp_path)
    assert skip and kwargs["skip_tokenizer_init"] is True
    assert "compilation_config" in kwargs and "LAUNCHER_STARTUP_OFF=graphs" in settings.reasons["compilation_config"]
    assert os.environ["VLLM_ENABLE_STARTUP_PLAN"] == "1"  # vLLM's recorded memory profile, reused
    assert settings.reasons["load_format"].startswith("vLLM's own loader")  # no fast loader installed here
    _, kwargs, settings, skip = _applied(monkeypatch, tmp_path, "graphs, skip_tokenizer ,startup_plan,nonsense")
    assert not skip and "skip_tokenizer_init" not in kwargs and "compilation_config" not in kwargs
    assert "vLLM's own CUDA-graph sizes" in settings.reasons["compilation_config"]
    assert os.environ["VLLM_ENABLE_STARTUP_PLAN"] == "0" and settings.kwargs["startup_plan"] is False
    assert StartupSwitches.from_env({"LAUNCHER_STARTUP_OFF": "nonsense"}).off == frozenset()


def test_vllm_keeps_its_tokenizer_where_it_needs_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from launcher.engines.vllm.settings import eos_stop_ids

    _, _, settings, skip = _applied(monkeypatch, tmp_path, stop=["\n\n"])
    assert not skip and "stop strings need it" in settings.reasons["skip_tokenizer_init"]
    engine, _, _, skip = _applied(monkeypatch, tmp_path)
    engine.skip_tokenizer, engine.tokenizer = skip, type("T", (), {"eos_token_id": 7})()
    assert eos_stop_ids(engine, SamplingSpec()) == [7]  # EOS still ends a sample without vLLM's tokenizer
    assert eos_stop_ids(engine, SamplingSpec(ignore_eos=True)) is None
    with pytest.raises(RuntimeError, match="LAUNCHER_STARTUP_OFF=skip_tokenizer"):
        eos_stop_ids(engine, SamplingSpec(stop=["x"]))  # a batch line with stop strings further down a file
    (tmp_path / "tekken.json").write_text("{}")  # vLLM's `auto` would load its Mistral tokenizer: a class of its own
    _, _, settings, skip = _applied(monkeypatch, tmp_path)
    assert not skip and "vLLM's own tokenizer class" in settings.reasons["skip_tokenizer_init"]


def test_vllm_without_its_tokenizer_decodes_with_the_workers() -> None:
    """vLLM started without a tokenizer (skip_tokenizer_init): samples are decoded with the worker's, once its
    thread has loaded it (the engine holds a stand-in until then); with one, vLLM's own object."""
    from launcher.engines.vllm.lifecycle import engine_tokenizer as _engine_tokenizer

    class NoTokenizer:
        def get_tokenizer(self) -> None:
            raise ValueError("skip_tokenizer_init is True")

    worker_tok, vllm_tok = object(), object()
    gate = threading.Event()
    prep = HostPrep(lambda: worker_tok, lambda t: None, lambda p: None, lambda p: [], lambda p: {})  # type: ignore[arg-type,return-value]
    prep.start(gate)
    gate.set()
    assert (
        _engine_tokenizer(NoTokenizer(), LazyTokenizer(prep)) is worker_tok
    )  # the real object: decode.py checks its class
    assert _engine_tokenizer(type("L", (), {"get_tokenizer": lambda self: vllm_tok})(), worker_tok) is vllm_tok


def test_records_that_may_carry_their_own_sampling(tmp_path: Path, tiny_model: Path) -> None:
    from launcher.job.prepare import may_carry_request_settings
    from launcher.spec import load_spec

    from .conftest import make_spec

    plain = write_jsonl(tmp_path / "plain.jsonl", [{"user_id": "u1", "context": "x"}])
    batch = write_jsonl(
        tmp_path / "batch.jsonl",
        ["", {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}],
    )
    assert not may_carry_request_settings(load_spec(make_spec(tmp_path, tiny_model, plain, name="a")))
    assert may_carry_request_settings(load_spec(make_spec(tmp_path, tiny_model, batch, name="b")))
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    assert may_carry_request_settings(load_spec(make_spec(tmp_path, tiny_model, tmp_path / "d.parquet", name="c")))


def test_loader_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from launcher.engines import loaders

    (tmp_path / "model.safetensors").write_bytes(b"")
    model, on = ModelSpec(path=str(tmp_path)), StartupSwitches()
    monkeypatch.setattr(loaders, "installed", lambda fmt: fmt == "fastsafetensors")
    choice = loaders.choose_loader(model, on, {})
    assert choice.load_format == "fastsafetensors" and "LAUNCHER_STARTUP_OFF=fast_loader" in choice.reason
    assert loaders.choose_loader(model, StartupSwitches(frozenset({"fast_loader"})), {}).load_format is None
    assert loaders.choose_loader(model, on, {"LAUNCHER_WEIGHTS_LOADER": "vllm"}).load_format is None
    with pytest.raises(ValueError, match="pip install runai-model-streamer"):
        loaders.choose_loader(model, on, {"LAUNCHER_WEIGHTS_LOADER": "runai_streamer"})
    (tmp_path / "model.safetensors").unlink()
    assert loaders.choose_loader(model, on, {}).load_format is None  # .bin checkpoints: vLLM's own


# -- the host-side start-up thread ---------------------------------------------------------------------------------


def test_host_work_waits_for_the_gate_and_hands_over_errors() -> None:
    gate = threading.Event()
    steps: list[str] = []
    prep = HostPrep(
        lambda: steps.append("tokenizer") or type("Tok", (), {"eos_token_id": 3})(),
        lambda tok: steps.append("preparer") or "preparer",  # type: ignore[arg-type,return-value]
        lambda p: steps.append("order"),
        lambda p: steps.append("first") or [],  # type: ignore[func-returns-value]
        lambda p: {"u": [1.0, 2.0, 2.0]},
    )
    prep.start(gate)
    time.sleep(0.2)
    assert steps == [] and not prep.finished(0)  # nothing runs before the engine says it may (vLLM's fork)
    opened = time.time()
    gate.set()
    assert LazyTokenizer(prep).eos_token_id == 3  # the engine's stand-in waits for the real tokenizer
    result = prep.result()
    assert steps == ["tokenizer", "preparer", "order", "first"] and result.stats == {"u": [1.0, 2.0, 2.0]}
    assert prep.timeline["wait_for_engine_fork"][1] >= opened - 0.01
    t = prep.timeline
    assert t["tokenizer"][0] <= t["prefix_order"][0] <= t["first_unit"][0] <= t["prompt_stats"][0]

    def broken() -> object:
        raise OSError("tokenizer.json unreadable")

    failing = HostPrep(broken, lambda t: None, lambda p: None, lambda p: [], lambda p: {})  # type: ignore[arg-type,return-value]
    failing.start()
    with pytest.raises(OSError, match="unreadable"):
        failing.result()
    with pytest.raises(RuntimeError, match="did not load"):
        failing.tokenizer()


def _exit_now() -> None:
    pass


def test_gate_opens_when_the_engine_process_exists_or_the_start_ended() -> None:
    gate, stop = threading.Event(), threading.Event()
    release_after_fork(gate, stop)
    time.sleep(0.1)
    assert not gate.is_set()
    child = mp.get_context("fork").Process(target=_exit_now)
    child.start()
    assert gate.wait(5)  # a new child (vLLM's engine core): host work may run
    child.join()
    gate2, stop2 = threading.Event(), threading.Event()
    release_after_fork(gate2, stop2)
    stop2.set()  # LLM() returned or failed without a child (in-process): released too
    assert gate2.wait(5)


# -- weights swap: when, and the sweep's grouping ---------------------------------------------------------------------


def _copy(src: Path, dst: Path, **config: object) -> Path:
    shutil.copytree(src, dst)
    if config:
        c = json.loads((dst / "config.json").read_text())
        c.update(config)
        (dst / "config.json").write_text(json.dumps(c))
    return dst


def test_swap_only_where_it_is_the_same_engine(tmp_path: Path, tiny_model: Path) -> None:
    same = _copy(tiny_model, tmp_path / "same", _name_or_path="elsewhere")  # where it came from does not matter
    a = ModelSpec(path=str(tiny_model))
    assert swap_decision(a, ModelSpec(path=str(same))).ok
    wider = _copy(tiny_model, tmp_path / "wider", intermediate_size=512)
    assert "config.json differs (intermediate_size)" in swap_decision(a, ModelSpec(path=str(wider))).reason
    quant = _copy(tiny_model, tmp_path / "q", quantization_config={"quant_method": "fp8"})
    assert "quantized checkpoint" in swap_decision(a, ModelSpec(path=str(quant))).reason
    tok = _copy(tiny_model, tmp_path / "tok")
    (tok / "tokenizer_config.json").write_text((tok / "tokenizer_config.json").read_text().replace("}", ', "x": 1}', 1))
    assert "tokenizer_config.json" in swap_decision(a, ModelSpec(path=str(tok))).reason
    for other, why in (
        (ModelSpec(path=str(same), quantization="fp8"), "model.quantization"),
        (ModelSpec(path=str(same), load_format="dummy"), "dummy"),
        (ModelSpec(path=str(same), trust_remote_code=True), "trust_remote_code"),
    ):
        decision = swap_decision(a, other)
        assert not decision.ok and why in decision.reason
    assert "several nodes" in swap_decision(a, ModelSpec(path=str(same)), nnodes=2).reason


def test_sweep_groups_swappable_models_behind_one_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    pytest.importorskip("vllm", reason="the chains are for vLLM engines")
    from launcher.job.entry import swap_chains
    from launcher.plan import expand
    from launcher.spec import load_spec

    from .conftest import make_spec

    same = _copy(tiny_model, tmp_path / "same")
    wider = _copy(tiny_model, tmp_path / "wider", intermediate_size=512)
    models = {"a": str(tiny_model), "b": str(same), "c": str(wider), "d": str(wider)}
    spec = make_spec(tmp_path, tiny_model, users_file, name="sw", models=models, model={"backend": "vllm"})
    text = json.loads(json.dumps(__import__("yaml").safe_load(spec.read_text())))
    del text["model"]["path"]
    spec.write_text(json.dumps(text))
    plan = expand(load_spec(spec))
    monkeypatch.delenv("LAUNCHER_STARTUP_OFF", raising=False)
    assert swap_chains(plan, list(models)) == [["a", "b"], ["c", "d"]]
    monkeypatch.setenv("LAUNCHER_STARTUP_OFF", "swap")
    assert swap_chains(plan, list(models)) == [["a"], ["b"], ["c"], ["d"]]


# -- JIT caches beside the compile cache ---------------------------------------------------------------------------


def test_jit_caches_live_beside_the_compile_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from launcher.engines.compile_cache import CompileCache, cache_key

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    key = cache_key(model, {"max_model_len": 1024}, "H100", {"vllm": "0.26.0"}, tmp_path / "scratch")
    monkeypatch.delenv("LAUNCHER_STARTUP_OFF", raising=False)
    env: dict[str, str] = {}
    cache = CompileCache(tmp_path / "shared", key, tmp_path / "scratch")
    cache.activate(env)
    assert cache.folder is not None
    for var in ("TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT"):
        assert Path(env[var]).parent == cache.folder  # published with the entry, found on another node
    cache.close()
    monkeypatch.setenv("LAUNCHER_STARTUP_OFF", "jit_cache")
    env = {}
    CompileCache(tmp_path / "shared2", key, tmp_path / "scratch2").activate(env)
    assert "FLASHINFER_WORKSPACE_BASE" not in env and "scratch2" not in env["TRITON_CACHE_DIR"]
    # start-up settings that never reach a graph keep the key (one cache with and without them)
    plain = cache_key(model, {"max_model_len": 1024}, "H100", {"vllm": "0.26.0"}, tmp_path)
    other = {"max_model_len": 1024, "skip_tokenizer_init": True, "load_format": "runai_streamer"}
    assert cache_key(model, other, "H100", {"vllm": "0.26.0"}, tmp_path).digest == plain.digest


# -- the bench's issue-28 figures ------------------------------------------------------------------------------------


def test_bench_reports_issue_28_ratios_and_targets() -> None:
    from launcher.bench.report import analyse

    shape = "cells-4x3x200x256"

    def row(system: str, **kw: object) -> dict[str, object]:
        return {"system": system, "shape": shape, "samples_per_min": None, **kw}

    ms = [
        row("cells", wall_s=200.0, engine_ready_s=55.0, gpu_busy_fraction=0.7),
        row("cells-warm", wall_s=150.0, engine_ready_s=18.0, gpu_busy_fraction=0.86),
        row("cells-seed-loop", wall_s=800.0, extrapolated=True),
        row("models-swap", model_swap_s=9.5, swapped=True),
        row("weights:vllm", weights_load_s=12.0),
        row("weights:runai_streamer", weights_load_s=5.0),
        row("startup:all-on", engine_ready_s=18.0, startup={"graph_capture_s": 2.0}),
        row("startup:overlap", engine_ready_s=29.0),
    ]
    result = analyse(ms)
    r, targets = result["ratios"][shape], result["targets"]
    assert r["sweep_vs_seed_loop"] == 4.0 and r["sweep_warm_vs_seed_loop"] == round(800 / 150, 3)
    assert (r["engine_ready_cold_s"], r["engine_ready_warm_s"], r["gpu_busy_fraction_warm"]) == (55.0, 18.0, 0.86)
    assert r["model_swap_s"] == 9.5 and r["weights_load_s"] == {"runai_streamer": 5.0, "vllm": 12.0}
    assert r["startup_switches"]["overlap"]["engine_ready_s"] == 29.0
    met = {name: t["met"] for name, t in targets.items()}
    assert met[f"engine ready warm <= 20 s at {shape}"] and met[f"model swap <= 15 s at {shape}"]
    assert met[f"warm sweep >= 5.0x the seed loop at {shape}"] and met[f"engine ready cold <= 60 s at {shape}"]
    not_swapped = analyse([row("models-swap", model_swap_s=3.0, swapped=False)])["targets"]
    assert not not_swapped[f"model swap <= 15 s at {shape}"]["met"]  # a fast new engine is not a swap


def test_one_worker_process_runs_its_models_in_turn(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    """A data-parallel worker of a swap group gets several --model: it runs them one after the other in its own
    process (HF here: each model gets its own engine, and its start-up is its own, not the previous model's)."""
    import subprocess
    import sys

    from launcher.plan import expand
    from launcher.plan.persist import save_plan
    from launcher.spec import load_spec

    from .conftest import ROOT, make_spec

    spec = make_spec(tmp_path, tiny_model, users_file, name="m", models={"a": str(tiny_model), "b": str(tiny_model)})
    text = json.loads(json.dumps(__import__("yaml").safe_load(spec.read_text())))
    del text["model"]["path"]
    spec.write_text(json.dumps(text))
    plan = expand(load_spec(spec))
    save_plan(plan)
    layout = json.dumps(ParallelLayout(1, 1, (), "cpu").as_dict())
    cmd = [sys.executable, "-m", "launcher.job.worker", str(plan.run.root), "--job", "0", "--replica", "0"]
    proc = subprocess.run(
        [*cmd, "--layout", layout, "--model", "a", "--model", "b"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = sorted(plan.run.worker_reports(), key=lambda r: r["started"])
    assert (a["model"], a["state"], b["model"], b["state"]) == ("a", "done", "b", "done")
    assert a["pid"] == b["pid"] and b["started"] >= a["ended"] - 1.0
    assert all(plan.run.unit(u.unit_id).is_done() for u in plan.units)


def _engine_core_logs() -> None:
    import logging

    logging.getLogger("vllm.v1.worker").info("Graph capturing finished in %d secs, took 0.77 GiB", 3)


def test_vllm_start_up_seconds_come_from_its_log_records_in_both_processes() -> None:
    """The summary's engine_startup: vLLM's own lines, whatever logging config vLLM applies, from the worker's process
    and from an engine core forked out of it."""
    import logging

    from launcher.engines.vllm.startup_log import StartupLines, startup_seconds

    logger = logging.getLogger("vllm.model_executor.model_loader")
    logger.setLevel(logging.INFO)
    logging.getLogger("vllm.v1.worker").setLevel(logging.INFO)
    lines = StartupLines().__enter__()
    logger.info("Loading weights took %.2f seconds", 12.25)
    logger.info("nothing to keep")
    child = mp.get_context("fork").Process(target=_engine_core_logs)
    child.start()
    child.join(30)
    lines.__exit__()
    logger.info("Loading weights took %.2f seconds", 99.0)  # after the start: not the engine's
    figures = startup_seconds(lines.figures())
    assert figures["weights_load_s"] == 12.25 and figures["graph_capture_s"] == 3.0
    assert not Path(lines.path).exists()
