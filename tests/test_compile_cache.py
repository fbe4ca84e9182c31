"""The compile cache: keyed by what invalidates it, a complete shared entry or none, nothing that serializes engine
starts, and a node folder no other user can plant."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from launcher.engines.compile_cache import CompileCache, UnsafeCacheFolder, cache_key, user_folder

VERSIONS = {"vllm": "0.26.0", "torch": "2.11.0", "cuda": "13.0"}
SAME_PATH = Path("/tmp/launcher-0")  # the node path in the key: one string on every node of a cluster


def _model(tmp_path: Path) -> Path:
    m = tmp_path / "model"
    m.mkdir(exist_ok=True)
    (m / "config.json").write_text(json.dumps({"hidden_size": 4096}))
    return m


def test_key_changes_with_what_invalidates_graphs(tmp_path: Path) -> None:
    m = _model(tmp_path)
    base = {
        "max_model_len": 1024,
        "max_num_batched_tokens": 8192,
        "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]},
        "max_num_seqs": 4,
    }
    k = cache_key(m, base, "H100", VERSIONS).digest
    assert cache_key(m, {**base, "gpu_memory_utilization": 0.8, "max_num_seqs": 3}, "H100", VERSIONS).digest == k
    assert cache_key(m, {**base, "max_model_len": 2048}, "H100", VERSIONS).digest != k
    assert cache_key(m, base, "H200", VERSIONS).digest != k
    assert cache_key(m, base, "H100", {**VERSIONS, "vllm": "0.27.0"}).digest != k
    assert (
        cache_key(m, base, "H100", VERSIONS, tmp_path / "a").digest
        != cache_key(m, base, "H100", VERSIONS, tmp_path / "b").digest
    )  # the node path is part of the key
    (m / "config.json").write_text(json.dumps({"hidden_size": 2048}))
    assert cache_key(m, base, "H100", VERSIONS).digest != k


def _start(root: Path, scratch: Path, model: Path, index: int, mode: str, results: mp.Queue) -> None:  # type: ignore[type-arg]
    os.environ["LAUNCHER_COMPILE_MISS"] = mode
    node = scratch / f"node{index % 2}"  # two nodes, four processes each; on real nodes the path is the same
    cache = CompileCache(root, cache_key(model, {"max_model_len": 1024}, "H100", VERSIONS, SAME_PATH), node)
    env: dict[str, str] = {}
    t0 = time.time()
    cache.activate(env)
    folder = Path(env["VLLM_CACHE_ROOT"])
    if not cache.hit:  # "compile": a few files, each naming its writer, taking a while like a real compile
        for i in range(20):
            (folder / "torch_compile_cache" / f"g{i}").mkdir(parents=True, exist_ok=True)
            (folder / "torch_compile_cache" / f"g{i}" / "artifact").write_text(f"process {index}\n" * 1000)
        time.sleep(1.0)
    ready = time.time()
    cache.publish(background=False)
    results.put((index, cache.source, cache.role, t0, ready, str(cache.folder)))
    cache.close()


def _run_many(tmp_path: Path, mode: str) -> list[tuple]:  # type: ignore[type-arg]
    model = _model(tmp_path)
    ctx = mp.get_context("fork")
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_start, args=(tmp_path / "shared", tmp_path / "scratch", model, i, mode, results))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    return [results.get(timeout=5) for _ in procs]


def test_a_miss_never_serializes_starts_and_leaves_one_whole_entry(tmp_path: Path) -> None:
    out = _run_many(tmp_path, "private")
    roles = [r[2] for r in out]
    assert roles.count("compiler") <= 2  # at most one compiler per node; the others did not wait for it
    # nobody waited for a compile: every process was "ready" within about one compile of the first start
    first_start = min(r[3] for r in out)
    assert max(r[4] for r in out) - first_start < 1.0 + 3.0, "starts were serialized behind a compile"
    entries = list((tmp_path / "shared").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary copy left behind
    entry = entries[0]
    assert (entry / "MANIFEST.json").exists()  # published whole, with its files' sha256
    writers = {(entry / "vllm" / "torch_compile_cache" / f"g{i}" / "artifact").read_text() for i in range(20)}
    assert len(writers) == 1  # every file from the same process: never a mix of two writers
    private = [Path(r[5]) for r in out if r[2] == "private"]
    assert all(not p.exists() for p in private)  # private folders are used once and removed
    # a later process on a third node copies the entry in, to the fixed path vLLM needs, and reads it
    node = tmp_path / "scratch" / "node2"
    later = CompileCache(
        tmp_path / "shared", cache_key(tmp_path / "model", {"max_model_len": 1024}, "H100", VERSIONS, SAME_PATH), node
    )
    env: dict[str, str] = {}
    later.activate(env)
    assert later.source == "shared" and later.folder == user_folder(node) / "compile" / later.key.digest
    assert (Path(env["VLLM_CACHE_ROOT"]) / "torch_compile_cache" / "g0" / "artifact").exists()
    later.close()
    again = CompileCache(later.root, later.key, node)  # the node copy is complete now: read in place, no lock
    again.activate({})
    assert again.source == "node" and again.seconds_lock_wait == 0.0
    again.close()


def test_wait_mode_reads_what_the_compiler_published(tmp_path: Path) -> None:
    out = _run_many(tmp_path, "wait")
    assert [r[2] for r in out].count("private") == 0  # everybody either compiled or waited and read
    assert [r[2] for r in out].count("compiler") <= 2


def test_entry_without_ready_marker_is_a_miss(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key = cache_key(model, {}, "H100", VERSIONS)
    (tmp_path / "shared" / key.digest / "vllm").mkdir(parents=True)  # a copy that died half-way
    cache = CompileCache(tmp_path / "shared", key, tmp_path / "scratch")
    env: dict[str, str] = {}
    cache.activate(env)
    assert not cache.hit and cache.role == "compiler" and env["VLLM_ENABLE_STARTUP_PLAN"] == "1"
    cache.close()


def _other_uid() -> int:
    try:
        return pwd.getpwnam("slurmtest").pw_uid  # the local Slurm's non-root user (slurm/up.sh)
    except KeyError:
        return 4242


@pytest.mark.skipif(os.getuid() != 0, reason="planting another user's folder needs root (CI runs as root)")
def test_a_folder_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch.chmod(0o1777)  # a shared /tmp: anyone may create names in it
    tmp_path.chmod(0o755)
    planted = scratch / f"launcher-{os.getuid()}"
    # another user creates the guessable name first: slurmtest for real where runuser works, else a chown
    made = (
        subprocess.run(
            ["runuser", "-u", "slurmtest", "--", "mkdir", "-p", str(planted / "compile")], capture_output=True
        )
        if shutil.which("runuser")
        else None
    )
    if made is None or made.returncode != 0:
        (planted / "compile").mkdir(parents=True)
        os.chown(planted, _other_uid(), -1)
    assert planted.stat().st_uid != os.getuid()
    with pytest.raises(UnsafeCacheFolder, match="belongs to uid"):
        user_folder(scratch)
    model = _model(tmp_path)
    cache = CompileCache(tmp_path / "shared", cache_key(model, {}, "H100", VERSIONS, scratch), scratch)
    env: dict[str, str] = {}
    cache.activate(env)  # refused: compiles in a fresh private folder, never under the planted one
    assert cache.role == "private" and not Path(env["VLLM_CACHE_ROOT"]).is_relative_to(planted)
    cache.close()
    os.chown(planted, os.getuid(), -1)
    planted.chmod(0o777)  # ours, but open to everyone: refused too
    with pytest.raises(UnsafeCacheFolder, match="mode 777"):
        user_folder(scratch)
    planted.chmod(0o700)
    assert user_folder(scratch) == planted
