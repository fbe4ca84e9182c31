"""engines/compile_cache.py: vLLM's torch.compile cache -> a shared entry per key, a private copy per node and user.

A cold vLLM start spends most of its time in Dynamo and Inductor; a start that finds their artifacts loads them
in seconds. Every worker of a run compiles the same graphs, so the first one to finish shares its cache.

Where things live, and why:
- vLLM 0.26 records absolute paths inside its cache (its index of compiled graphs, its AOT artifact): a cache
  copied to another folder fails to load (measured on an H100). So a node's copy sits at one fixed path,
  <scratch>/launcher-<uid>/compile/<key> (scratch: $LAUNCHER_SCRATCH, else /tmp), and that path is in the key.
- That folder is this user's alone. vLLM loads and runs code from it, so a folder another user created first at
  that (guessable) path would hand them our processes: <scratch>/launcher-<uid> must be a real directory owned
  by us with mode 0700, else the node copy is refused and the engine compiles in a fresh private folder.
- The shared entry, <cache root>/<key>, is published once and never changes: a copy to a private temporary sibling
  with a random name, then rename(2) (atomic on one file system, NFS and Lustre included). Readers see a whole entry
  or none. It carries a manifest of its files' sha256; another user's entry is used only when
  $LAUNCHER_COMPILE_CACHE_TRUST trusts them, and only after every file was checked against the manifest while it
  was copied into the private node folder (store/cache_entry.py). Anything else is ignored (logged): the job
  compiles.

Who waits for whom (nothing serializes engine starts on a node):
- a hit (the node copy is complete, or the shared entry is and gets copied in): every worker of the node reads the
  same folder at once. vLLM only reads it then; the files it adds at run time (Triton kernels, its start-up plan)
  are each written to a temporary name and renamed. The copy-in itself runs under a short node lock.
- a miss: one process per node compiles into the node folder (it holds the node lock until it has published).
  The others do not wait for it: each compiles into a private folder of its own, used once, never published
  (LAUNCHER_COMPILE_MISS=private, the default). LAUNCHER_COMPILE_MISS=wait makes them wait and then read the
  published copy instead. Which is faster depends on how long a compile takes against a start from the cache;
  benchmarks/ measures both (issue 16).
The entry is published after the first results came back, not right after start-up: Triton compiles some kernels
(the sampler's top-k/top-p, per batch-size class) on first use, and those belong in the cache too.
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
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from launcher.store.cache_entry import (
    TRUST_ENV,
    CacheRefused,
    Trust,
    UnsafeCacheFolder,
    copy_in,
    entry_path,
    node_copy,
    private_compiles,
    publish,
    user_folder,
)

log = logging.getLogger("launcher.engines.compile_cache")

CACHE_ENV = "LAUNCHER_COMPILE_CACHE"  # the shared root; "off" leaves vLLM's own cache alone
SCRATCH_ENV = "LAUNCHER_SCRATCH"  # node-local folder; the same path on every node (default /tmp)
MISS_ENV = "LAUNCHER_COMPILE_MISS"  # private (default) | wait
READY = "READY.json"  # written last inside a node copy: a folder without it is never read (entries: MANIFEST.json)
# Engine settings that never reach a compiled graph: leaving them out lets runs that differ only in them share.
RUNTIME_ONLY = frozenset(
    {
        "gpu_memory_utilization",
        "enable_prefix_caching",
        "seed",
        "disable_log_stats",
        "kv_cache_memory_bytes",
        "swap_space",
        "inflight_requests",
        # issue 28: neither enters a graph (vLLM leaves both out of its own hash), so switching them keeps the cache
        "skip_tokenizer_init",
        "load_format",
        "model_loader_extra_config",
    }
)


def default_root() -> Path | None:
    """The shared cache root: $LAUNCHER_COMPILE_CACHE, else ~/.cache/launcher/compile. None when switched off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "launcher" / "compile"


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or "/tmp")


@dataclass(frozen=True)
class CacheKey:
    digest: str
    factors: dict[str, Any]


def cache_key(
    model_dir: str | Path,
    engine_kwargs: Mapping[str, Any],
    gpu_name: str | None,
    versions: Mapping[str, str],
    node_path: Path | None = None,
) -> CacheKey:
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
        "node_path": str(node_path or scratch_root()),  # vLLM's cache only loads from the path it was built at
    }
    blob = json.dumps(factors, sort_keys=True, default=str).encode()
    return CacheKey(hashlib.sha256(blob).hexdigest()[:20], factors)


def miss_mode() -> str:
    mode = os.environ.get(MISS_ENV, "private").strip().lower()
    return mode if mode in ("private", "wait") else "private"


@dataclass
class CompileCache:
    """One engine start's view of one cache entry: activate() before vLLM starts, publish() once results came back,
    close() at the end."""

    root: Path
    key: CacheKey
    scratch: Path = field(default_factory=scratch_root)
    trust: Trust = field(default_factory=Trust)
    """Whose published entries are used besides ours ($LAUNCHER_COMPILE_CACHE_TRUST, read by open_cache)."""
    source: str = "none"  # where the compiled graphs came from: node, shared, none (compiled here)
    role: str = "reader"  # reader | compiler (fills the node copy, publishes) | private (compiles for itself)
    folder: Path | None = None  # what the engine reads and writes
    seconds_copy_in: float = 0.0
    seconds_lock_wait: float = 0.0
    _lock: IO[str] | None = field(default=None, init=False, repr=False)
    _publisher: threading.Thread | None = field(default=None, init=False, repr=False)
    _published: bool = field(default=False, init=False, repr=False)

    @property
    def node(self) -> Path:
        return node_copy(self.scratch, self.key.digest)

    @property
    def entry(self) -> Path:
        return entry_path(self.root, self.key.digest)

    @property
    def hit(self) -> bool:
        return self.source != "none"

    def activate(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Choose the folder (see the module docstring) and point vLLM, Inductor and Triton at it. Returns the
        variables set (also written to `env`, os.environ by default)."""
        target = os.environ if env is None else env
        try:
            node = self.node
        except UnsafeCacheFolder as exc:
            log.warning("%s", exc)
            self.role, self.folder = "private", Path(tempfile.mkdtemp(prefix="launcher-compile-"))
            return self._point(target)
        node.parent.mkdir(parents=True, exist_ok=True)
        if (node / READY).exists():
            self.source, self.folder = "node", node
            return self._point(target)
        t0 = time.perf_counter()
        lock = open(node.parent / f"{self.key.digest}.lock", "a+")  # noqa: SIM115 - held past this call
        got = _try_lock(lock)
        if not got:
            holder = _holder(lock)
            if holder == "copy" or miss_mode() == "wait":
                fcntl.flock(lock, fcntl.LOCK_EX)  # a copy-in takes seconds; "wait" waits for a compile too
                got = True
        self.seconds_lock_wait = time.perf_counter() - t0
        if not got:  # another process of this node compiles this key now: compile for ourselves, beside it
            lock.close()
            private = private_compiles(self.scratch)
            private.mkdir(mode=0o700, exist_ok=True)
            self.role, self.folder = "private", Path(tempfile.mkdtemp(prefix=f"{self.key.digest}-", dir=private))
            return self._point(target)
        if (node / READY).exists():  # done by the holder we waited for
            _unlock(lock)
            self.source, self.folder = "node", node
            return self._point(target)
        t0 = time.perf_counter()
        _set_holder(lock, "copy")
        try:  # checked file by file as it is copied: trusted publisher, manifest hashes (store/cache_entry.py)
            copy_in(self.root, self.key.digest, node, self.trust)
            (node / READY).write_text(json.dumps({"copied_from": str(self.entry), "at": time.time()}))
            self.source = "shared"
        except CacheRefused as why:
            log.info("compile cache entry %s not used: %s; compiling", self.entry, why)
        except OSError as exc:  # a half-readable entry is a miss, never an error
            log.warning("compile cache %s unreadable (%s); compiling afresh", self.entry, exc)
        self.seconds_copy_in = time.perf_counter() - t0
        if self.source == "shared":
            _unlock(lock)
            self.folder = node
            return self._point(target)
        _set_holder(lock, "compile")
        shutil.rmtree(node, ignore_errors=True)  # what a compiler that died here left half-written
        node.mkdir()
        self.role, self.folder, self._lock = "compiler", node, lock  # held until published
        return self._point(target)

    def _point(self, target: Any) -> dict[str, str]:
        assert self.folder is not None
        variables = {
            "VLLM_CACHE_ROOT": str(self.folder / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(self.folder / "inductor"),
            "TRITON_CACHE_DIR": str(self.folder / "triton"),
            # FlashInfer's JIT modules and downloaded cubins ($FLASHINFER_WORKSPACE_BASE/.cache/flashinfer/<version>/
            # <arch>): a first use compiles for up to a minute; here they travel with the entry to other nodes.
            "FLASHINFER_WORKSPACE_BASE": str(self.folder / "flashinfer"),
        }
        if not _jit_cache_on():  # measured without: kernels JIT-compiled afresh, as on a node that never ran one
            variables["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="launcher-triton-")
            del variables["FLASHINFER_WORKSPACE_BASE"]
        # vLLM >= 0.26 keeps its memory-profiling result under VLLM_CACHE_ROOT and skips that pass on a later
        # start when nothing changed (vllm/v1/worker/startup_plan.py; written atomically). A user's choice wins.
        if "VLLM_ENABLE_STARTUP_PLAN" not in target:
            variables["VLLM_ENABLE_STARTUP_PLAN"] = "1"
        target.update(variables)
        log.info(
            "compile cache: %s (%s, %s)",
            self.folder,
            self.role,
            f"compiled graphs from {self.source}" if self.hit else "compiling",
        )
        return variables

    def drop(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """vLLM did not start from this folder: mark a node copy as bad for everyone (the next start on this node
        compiles it again), and point this process at a fresh private folder for its second try."""
        if self.role == "compiler" and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._release()
        elif self.role == "reader" and self.folder is not None:
            with contextlib.suppress(OSError):
                (self.folder / READY).unlink()
        elif self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.source, self.role = "none", "private"
        self.folder = Path(tempfile.mkdtemp(prefix="launcher-compile-"))
        return self._point(os.environ if env is None else env)

    def publish(self, background: bool = True) -> None:
        """Share what this process compiled (compiler only), unless an entry is there already. Runs beside
        generation by default; a second call does nothing."""
        if self._published or self.role != "compiler":
            return
        self._published = True
        if background:
            self._publisher = threading.Thread(target=self._publish, name="compile-cache-publish", daemon=True)
            self._publisher.start()
        else:
            self._publish()

    def _publish(self) -> None:
        assert self.folder is not None
        info = {"factors": self.key.factors, "host": socket.gethostname(), "published": time.time()}
        try:  # a manifest of sha256s, a private temporary folder with a random name, then rename
            if publish(self.folder, self.root, self.key.digest, info):
                log.info("compile cache published: %s", self.entry)
        except OSError as exc:  # the shared FS refused: the run goes on
            log.info("compile cache not published (%s)", exc)
        finally:
            with contextlib.suppress(OSError):  # this node's copy is complete: later starts read it
                (self.folder / READY).write_text(json.dumps(info, indent=1, default=str))
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            _unlock(self._lock)
            self._lock = None

    def close(self, timeout_s: float = 300.0) -> None:
        """Wait for a running publish; drop a private folder. The node copy stays for the next start here."""
        if self._publisher is not None:
            self._publisher.join(timeout_s)
        self._release()
        if self.role == "private" and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _jit_cache_on() -> bool:
    from launcher.engines.startup import StartupSwitches

    return StartupSwitches.from_env().on("jit_cache")


def _try_lock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(f: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError):
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _set_holder(f: IO[str], role: str) -> None:
    f.seek(0)
    f.truncate()
    f.write(role)
    f.flush()


def _holder(f: IO[str]) -> str:
    f.seek(0)
    return f.read().strip()


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
    node_path = scratch / f"launcher-{os.getuid()}"
    try:
        trust = Trust.from_env()
    except ValueError as exc:  # a typo trusts nobody but us; said where the job's log shows it
        log.warning("%s; only your own compile cache entries are used", exc)
        trust = Trust()
    key = cache_key(model_dir, engine_kwargs, gpu_name, library_versions(), node_path)
    return CompileCache(root, key, scratch, trust)


__all__ = [
    "CACHE_ENV",
    "MISS_ENV",
    "TRUST_ENV",
    "CacheKey",
    "CompileCache",
    "UnsafeCacheFolder",
    "cache_key",
    "default_root",
    "library_versions",
    "open_cache",
    "user_folder",
]
