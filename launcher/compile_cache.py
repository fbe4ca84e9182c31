"""compile_cache.py: vLLM's torch.compile cache on shared storage, keyed by what invalidates it.

A cold vLLM start spends most of its time in Dynamo and Inductor; a start that finds their artifacts loads them
in seconds. Every array task of a job compiles the same graphs, so the first one to finish shares its cache.

Concurrent writers are known to corrupt vLLM's own cache folder, so no two processes write one folder at once:
- vLLM 0.26 records absolute paths inside its cache (its index of compiled graphs, its AOT artifact): a cache
  copied to another folder fails to load and takes the engine down (measured on an H100). So each node keeps
  its copy at one fixed path, <scratch>/launcher-compile-<key> (scratch: $LAUNCHER_SCRATCH, else /tmp, never a
  per-job TMPDIR), and that path is part of the key;
- a node-local lock (flock) on that folder is held while vLLM starts, the only time it compiles and writes
  there: a second task of the same key on the same node waits, then starts from what the first compiled.
  Triton's kernel cache, which vLLM fills at run time too, writes each file atomically and needs no lock;
- a task that finds a complete shared entry and no copy on its node copies the entry in first;
- a task that compiled publishes its folder by copying it to a temporary sibling of the entry and renaming that
  into place. rename(2) is atomic on one file system (NFS and Lustre included): readers see a whole entry or
  none, and when two tasks race, the first rename wins and the other drops its copy. Entries never change.
The entry is published after the first results came back, not right after start-up: Triton compiles some
kernels (the sampler's top-k/top-p, per batch-size class) on first use, and those belong in the cache too.
If vLLM still fails to start from a copied cache, the engine drops the copy and compiles once more.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("launcher.compile_cache")

CACHE_ENV = "LAUNCHER_COMPILE_CACHE"  # the shared root; "off" leaves vLLM's own cache alone
SCRATCH_ENV = "LAUNCHER_SCRATCH"  # node-local folder for the node's copy; the same path on every node (default /tmp)
READY = "READY.json"  # written last inside an entry: an entry without it is never read
# Engine settings that never reach a compiled graph: leaving them out lets runs that differ only in them share.
RUNTIME_ONLY = frozenset({"gpu_memory_utilization", "enable_prefix_caching", "seed", "disable_log_stats",
                          "kv_cache_memory_bytes", "swap_space", "inflight_requests"})
STALE_TMP_S = 6 * 3600  # a temporary copy this old belongs to a task that died while publishing


def default_root() -> Path | None:
    """The shared cache root: $LAUNCHER_COMPILE_CACHE, else ~/.cache/launcher/compile (where vLLM itself caches).
    None when switched off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "launcher" / "compile"


@dataclass(frozen=True)
class CacheKey:
    digest: str
    factors: dict[str, Any]


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or "/tmp")


def cache_key(model_dir: str | Path, engine_kwargs: Mapping[str, Any], gpu_name: str | None,
              versions: Mapping[str, str], scratch: Path | None = None) -> CacheKey:
    """What invalidates compiled graphs: the model's config (and path: vLLM hashes it), the vLLM / torch / CUDA
    versions, the GPU, and the engine settings that shape the graphs (max_model_len, max_num_batched_tokens,
    CUDA-graph sizes, dtype, quantization, TP...). vLLM checks its own finer hash inside the entry as well."""
    model = Path(model_dir)
    config = model / "config.json"
    ignored = set(RUNTIME_ONLY)
    compilation = engine_kwargs.get("compilation_config")
    if isinstance(compilation, Mapping) and compilation.get("cudagraph_capture_sizes"):
        ignored.add("max_num_seqs")  # it only shapes graphs through the capture sizes, given explicitly here
    factors: dict[str, Any] = {
        "versions": dict(sorted(versions.items())),
        "gpu": gpu_name or "cpu",
        "model_path": str(model.resolve()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else None,
        "engine": {k: engine_kwargs[k] for k in sorted(engine_kwargs) if k not in ignored},
        "node_path": str(scratch or scratch_root()),  # vLLM's cache only loads from the path it was built at
    }
    blob = json.dumps(factors, sort_keys=True, default=str).encode()
    return CacheKey(hashlib.sha256(blob).hexdigest()[:20], factors)


@dataclass
class CompileCache:
    """One task's view of one cache entry: activate() before vLLM starts, started() once it has, publish() once
    results came back, close() at the end."""

    root: Path
    key: CacheKey
    scratch: Path = field(default_factory=scratch_root)
    source: str = "none"  # where the compiled graphs came from: shared, node, none
    seconds_copy_in: float = 0.0
    seconds_lock_wait: float = 0.0
    _lock: Any = field(default=None, init=False, repr=False)
    _publisher: threading.Thread | None = field(default=None, init=False, repr=False)
    _published: bool = field(default=False, init=False, repr=False)

    @property
    def private(self) -> Path:
        return self.scratch / f"launcher-compile-{self.key.digest}"

    @property
    def entry(self) -> Path:
        return self.root / self.key.digest

    @property
    def hit(self) -> bool:
        return self.source != "none"

    def activate(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Take the node lock, make sure the node's copy holds the shared entry when one is complete, and point
        the caches at it. Returns the variables set (also written to `env`, os.environ by default)."""
        target = os.environ if env is None else env
        self.scratch.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self._lock = open(self.scratch / f"launcher-compile-{self.key.digest}.lock", "w")  # noqa: SIM115
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.seconds_lock_wait = time.perf_counter() - t0
        t0 = time.perf_counter()
        if (self.private / READY).exists():
            self.source = "node"
        elif (self.entry / READY).exists():
            shutil.rmtree(self.private, ignore_errors=True)
            try:
                shutil.copytree(self.entry, self.private, symlinks=True)
                self.source = "shared"
            except OSError as exc:  # a half-readable entry is a miss, never an error
                log.warning("compile cache %s unreadable (%s); compiling afresh", self.entry, exc)
                shutil.rmtree(self.private, ignore_errors=True)
        elif any(self.private.glob("vllm/torch_compile_cache/*")):
            self.source = "node"  # compiled here by an earlier task that has not published (yet)
        self.private.mkdir(parents=True, exist_ok=True)
        self.seconds_copy_in = time.perf_counter() - t0
        variables = {
            "VLLM_CACHE_ROOT": str(self.private / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(self.private / "inductor"),
            "TRITON_CACHE_DIR": str(self.private / "triton"),
        }
        # vLLM >= 0.26 can also keep its memory-profiling result under VLLM_CACHE_ROOT and skip that pass on a
        # later start (it re-profiles whenever the fingerprint or the free memory differs). A user's choice wins.
        if "VLLM_ENABLE_STARTUP_PLAN" not in target:
            variables["VLLM_ENABLE_STARTUP_PLAN"] = "1"
        target.update(variables)
        log.info("compile cache: %s (%s from %s)", self.private, "compiled graphs" if self.hit else "nothing",
                 self.source)
        return variables

    def started(self) -> None:
        """vLLM is up: it will not write its compile cache again, so other tasks on this node may start."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def drop(self) -> None:
        """The node's copy failed to load: remove it (the lock is still held), so the next start compiles."""
        shutil.rmtree(self.private, ignore_errors=True)
        self.source = "none"

    def publish(self, background: bool = True) -> None:
        """Share what this task compiled, unless an entry is there already. Runs beside generation by default;
        a second call does nothing."""
        if self._published:
            return
        self._published = True
        if (self.entry / READY).exists():
            return
        if background:
            self._publisher = threading.Thread(target=self._publish, name="compile-cache-publish", daemon=True)
            self._publisher.start()
        else:
            self._publish()

    def _publish(self) -> None:
        tmp = self.root / f".{self.key.digest}.{socket.gethostname()}.{os.getpid()}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _drop_stale(self.root)
            shutil.copytree(self.private, tmp, symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.lock", "*.tmp"))
            (tmp / READY).write_text(json.dumps({"factors": self.key.factors, "host": socket.gethostname(),
                                                 "published": time.time()}, indent=1, default=str))
            os.rename(tmp, self.entry)
            (self.private / READY).write_text((self.entry / READY).read_text())  # this node's copy is that entry
            log.info("compile cache published: %s", self.entry)
        except OSError as exc:  # another task won the rename, or the shared FS refused: the run goes on
            log.info("compile cache not published (%s)", exc)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def close(self, timeout_s: float = 300.0) -> None:
        """Wait for a running publish. The node's copy stays: the next task here starts from it."""
        self.started()
        if self._publisher is not None:
            self._publisher.join(timeout_s)


def _drop_stale(root: Path) -> None:
    now = time.time()
    for tmp in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)


def library_versions() -> dict[str, str]:
    """vLLM, torch and CUDA versions without starting CUDA (vLLM is imported by the engine anyway)."""
    out: dict[str, str] = {}
    with contextlib.suppress(Exception):
        import torch

        out["torch"] = str(torch.__version__)
        out["cuda"] = str(torch.version.cuda or "none")
    with contextlib.suppress(Exception):
        import vllm

        out["vllm"] = str(vllm.__version__)
    return out


def open_cache(model_dir: str | Path, engine_kwargs: Mapping[str, Any], gpu_name: str | None) -> CompileCache | None:
    root = default_root()
    if root is None:
        return None
    scratch = scratch_root()
    return CompileCache(root, cache_key(model_dir, engine_kwargs, gpu_name, library_versions(), scratch), scratch)


__all__ = ["CACHE_ENV", "CacheKey", "CompileCache", "cache_key", "default_root", "library_versions", "open_cache"]
