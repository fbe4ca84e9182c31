"""compile_cache.py: vLLM's torch.compile cache -> a shared entry per key, a private copy per node and user.

A cold vLLM start spends most of its time in Dynamo and Inductor; a start that finds their artifacts loads them
in seconds. Every worker of a run compiles the same graphs, so the first one to finish shares its cache.

Where things live, and why:
- vLLM 0.26 records absolute paths inside its cache (its index of compiled graphs, its AOT artifact): a cache
  copied to another folder fails to load (measured on an H100). So a node's copy sits at one fixed path,
  <scratch>/launcher-<uid>/compile/<key> (scratch: $LAUNCHER_SCRATCH, else /tmp), and that path is in the key.
- That folder is this user's alone. vLLM loads and runs code from it, so a folder another user created first at
  that (guessable) path would hand them our processes: <scratch>/launcher-<uid> must be a real directory owned
  by us with mode 0700, else the node copy is refused and the engine compiles in a fresh private folder.
- The shared entry, <output.dir>/cache/compile/<key>, is published once and never changes: a copy to a temporary
  sibling, then rename(2) (atomic on one file system, NFS and Lustre included). Readers see a whole entry or none.

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
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("launcher.engines.compile_cache")

CACHE_ENV = "LAUNCHER_COMPILE_CACHE"  # the shared root; "off" leaves vLLM's own cache alone
SCRATCH_ENV = "LAUNCHER_SCRATCH"  # node-local folder; the same path on every node (default /tmp)
MISS_ENV = "LAUNCHER_COMPILE_MISS"  # private (default) | wait
READY = "READY.json"  # written last inside an entry or a node copy: a folder without it is never read
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
STALE_TMP_S = 6 * 3600  # a temporary copy this old belongs to a process that died while publishing


class UnsafeCacheFolder(RuntimeError):
    """The node folder for this user's cache exists but is not provably ours alone."""


def default_root() -> Path | None:
    """The shared cache root: $LAUNCHER_COMPILE_CACHE, else ~/.cache/launcher/compile. None when switched off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "launcher" / "compile"


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or "/tmp")


def user_folder(scratch: Path) -> Path:
    """<scratch>/launcher-<uid>, created 0700; refused (UnsafeCacheFolder) when it is a link, not a directory, not
    ours, or open to others: whoever controls it controls code our engine loads."""
    base = scratch / f"launcher-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.makedirs(scratch, exist_ok=True)
        os.mkdir(base, 0o700)
    st = os.lstat(base)
    problems = []
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        problems.append("is not a plain directory")
    if st.st_uid != os.getuid():
        problems.append(f"belongs to uid {st.st_uid}, not to us ({os.getuid()})")
    if st.st_mode & 0o077:
        problems.append(f"has mode {stat.S_IMODE(st.st_mode):o} (others may write or read it)")
    if problems:
        raise UnsafeCacheFolder(
            f"{base} {' and '.join(problems)}; the compile cache will not use it (someone "
            "else may have planted it). Remove it, or set LAUNCHER_SCRATCH to a folder of yours"
        )
    return base


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
        return user_folder(self.scratch) / "compile" / self.key.digest

    @property
    def entry(self) -> Path:
        return self.root / self.key.digest

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
            private = user_folder(self.scratch) / "private"
            private.mkdir(exist_ok=True)
            self.role, self.folder = "private", Path(tempfile.mkdtemp(prefix=f"{self.key.digest}-", dir=private))
            return self._point(target)
        if (node / READY).exists():  # done by the holder we waited for
            _unlock(lock)
            self.source, self.folder = "node", node
            return self._point(target)
        t0 = time.perf_counter()
        if (self.entry / READY).exists() and _ours(self.entry):
            _set_holder(lock, "copy")
            shutil.rmtree(node, ignore_errors=True)
            try:
                shutil.copytree(self.entry, node, symlinks=True)
                self.source = "shared"
            except OSError as exc:  # a half-readable entry is a miss, never an error
                log.warning("compile cache %s unreadable (%s); compiling afresh", self.entry, exc)
                shutil.rmtree(node, ignore_errors=True)
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
        tmp = self.root / f".{self.key.digest}.{socket.gethostname()}.{os.getpid()}.tmp"
        info = json.dumps(
            {"factors": self.key.factors, "host": socket.gethostname(), "published": time.time()}, indent=1, default=str
        )
        try:
            if not (self.entry / READY).exists():
                self.root.mkdir(parents=True, exist_ok=True)
                _drop_stale(self.root)
                shutil.copytree(
                    self.folder,
                    tmp,
                    symlinks=True,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.lock", "*.tmp"),
                )
                (tmp / READY).write_text(info)
                os.rename(tmp, self.entry)
                log.info("compile cache published: %s", self.entry)
        except OSError as exc:  # another node won the rename, or the shared FS refused: the run goes on
            log.info("compile cache not published (%s)", exc)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.folder / READY).write_text(info)  # this node's copy is complete: later starts read it
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


def _ours(path: Path) -> bool:
    """A shared entry someone else created is not loaded: it would run their code in our engine."""
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


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
    node_path = scratch / f"launcher-{os.getuid()}"
    return CompileCache(root, cache_key(model_dir, engine_kwargs, gpu_name, library_versions(), node_path), scratch)


__all__ = [
    "CACHE_ENV",
    "MISS_ENV",
    "CacheKey",
    "CompileCache",
    "UnsafeCacheFolder",
    "cache_key",
    "default_root",
    "library_versions",
    "open_cache",
    "user_folder",
]
