"""The shared compile cache: keyed by what invalidates it, a complete entry or none, safe with many writers."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from launcher.compile_cache import READY, CompileCache, cache_key

VERSIONS = {"vllm": "0.26.0", "torch": "2.11.0", "cuda": "13.0"}


def _model(tmp_path: Path) -> Path:
    m = tmp_path / "model"
    m.mkdir(exist_ok=True)
    (m / "config.json").write_text(json.dumps({"hidden_size": 4096}))
    return m


def test_key_changes_with_what_invalidates_graphs(tmp_path: Path) -> None:
    m = _model(tmp_path)
    base = {"max_model_len": 1024, "max_num_batched_tokens": 8192,
            "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]}, "max_num_seqs": 4}
    k = cache_key(m, base, "H100", VERSIONS).digest
    assert cache_key(m, {**base, "gpu_memory_utilization": 0.8, "max_num_seqs": 3}, "H100", VERSIONS).digest == k
    assert cache_key(m, {**base, "max_model_len": 2048}, "H100", VERSIONS).digest != k
    assert cache_key(m, base, "H200", VERSIONS).digest != k
    assert cache_key(m, base, "H100", {**VERSIONS, "vllm": "0.27.0"}).digest != k
    (m / "config.json").write_text(json.dumps({"hidden_size": 2048}))
    assert cache_key(m, base, "H100", VERSIONS).digest != k


def _task(root: Path, scratch: Path, model: Path, index: int, results: mp.Queue) -> None:
    node = scratch / f"node{index % 2}"  # two nodes, four tasks each
    cache = CompileCache(root, cache_key(model, {"max_model_len": 1024}, "H100", VERSIONS), node)
    env: dict[str, str] = {}
    cache.activate(env)
    private = Path(env["VLLM_CACHE_ROOT"])
    if not cache.hit:  # "compile" under the node lock: a few files, each naming its writer
        for i in range(20):
            (private / "torch_compile_cache" / f"g{i}").mkdir(parents=True, exist_ok=True)
            (private / "torch_compile_cache" / f"g{i}" / "artifact").write_text(f"task {index}\n" * 1000)
    cache.started()
    cache.publish(background=False)
    results.put((index, cache.source))
    cache.close()


def test_many_tasks_at_once_leave_one_whole_entry(tmp_path: Path) -> None:
    model = _model(tmp_path)
    root, scratch = tmp_path / "shared", tmp_path / "scratch"
    ctx = mp.get_context("fork")
    results: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_task, args=(root, scratch, model, i, results)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    sources = [results.get(timeout=5)[1] for _ in procs]
    assert sources.count("none") <= 2  # at most one compile per node; the others start from a copy
    entries = [p for p in root.iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary copy left behind
    entry = entries[0]
    assert (entry / READY).exists()
    writers = {(entry / "vllm" / "torch_compile_cache" / f"g{i}" / "artifact").read_text() for i in range(20)}
    assert len(writers) == 1  # every file from the same task: never a mix of two writers
    # a task on a third node finds the entry complete and copies it in, at the fixed path vLLM needs
    later = CompileCache(root, cache_key(model, {"max_model_len": 1024}, "H100", VERSIONS), scratch / "node2")
    env: dict[str, str] = {}
    later.activate(env)
    assert later.source == "shared" and later.private == scratch / "node2" / f"launcher-compile-{later.key.digest}"
    assert (Path(env["VLLM_CACHE_ROOT"]) / "torch_compile_cache" / "g0" / "artifact").exists()
    later.close()


def test_entry_without_ready_marker_is_a_miss(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key = cache_key(model, {}, "H100", VERSIONS)
    (tmp_path / "shared" / key.digest / "vllm").mkdir(parents=True)  # a copy that died half-way
    cache = CompileCache(tmp_path / "shared", key, tmp_path / "scratch")
    env: dict[str, str] = {}
    cache.activate(env)
    assert not cache.hit and env["VLLM_ENABLE_STARTUP_PLAN"] == "1"
    assert cache_key(model, {}, "H100", VERSIONS, tmp_path / "a").digest != cache_key(
        model, {}, "H100", VERSIONS, tmp_path / "b").digest  # the node path is part of the key
    cache.close()
