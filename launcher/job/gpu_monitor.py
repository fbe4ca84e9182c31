"""job/gpu_monitor.py: every GPU a worker holds, sampled once a second through NVML while it generates.

What the guide sells vLLM with, measured rather than claimed: SM utilization (what `nvidia-smi dmon -s u` shows),
memory used of total, and power. One daemon thread per worker; a sample is a few NVML calls per GPU (tens of
microseconds), so the cost is nothing measurable beside a second of generation.

Utilization is kept as a histogram of whole percents (NVML reports integers), so a report stays a few hundred bytes
however long the run, and the run's mean and p10 over all workers are exact (gather/throughput.py merges them).
When NVML cannot run (no driver library, no `nvidia-ml-py`, a GPU id it cannot resolve) the monitor says why once
and the figures stay empty: a run never fails for want of them.

NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES; the ids a worker gets are the job's view of them
(Slurm's CUDA_VISIBLE_DEVICES: indices, or UUIDs). A "GPU-..." id is looked up by UUID, an index by index.

For CPU-only machines (CI) `LAUNCHER_FAKE_NVML` names a JSON file that a FakeNvml reads instead of the driver: a
fake, named as one, standing in only for the hardware the CI machine cannot have.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from launcher.store.records import GpuFigures

log = logging.getLogger("launcher.job")
FAKE_ENV = "LAUNCHER_FAKE_NVML"
MIB = 1024 * 1024


class Nvml(Protocol):
    """The five calls of `pynvml` (nvidia-ml-py) the monitor makes; FakeNvml implements the same."""

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...


class _Reading:
    def __init__(self, **values: float) -> None:
        self.__dict__.update(values)


class FakeNvml:
    """A fake NVML for machines without a GPU: replays the readings of a JSON file, one per call, cycling.

    {"GPU-or-index": {"name": "...", "memory_total_mib": 81559, "util": [90, 95, 0], "memory_used_mib": [70000],
    "power_w": [350.0]}, ...}. Every id the worker is given must be in it, as with a real driver."""

    def __init__(self, path: str) -> None:
        self.table: dict[str, dict[str, Any]] = json.loads(Path(path).read_text())
        self.calls: dict[tuple[str, str], int] = {}

    def nvmlInit(self) -> None:
        return None

    def nvmlShutdown(self) -> None:
        return None

    def _handle(self, key: str) -> str:
        if key not in self.table:
            raise LookupError(f"fake NVML ({os.environ.get(FAKE_ENV)}) has no GPU {key!r}")
        return key

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return self._handle(str(index))

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        return self._handle(uuid)

    def _next(self, handle: str, field: str) -> float:
        values = self.table[handle].get(field) or [0]
        n = self.calls.get((handle, field), 0)
        self.calls[(handle, field)] = n + 1
        return float(values[n % len(values)])

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return str(self.table[handle].get("name", "fake GPU"))

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return _Reading(gpu=self._next(handle, "util"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        total = float(self.table[handle].get("memory_total_mib", 0)) * MIB
        return _Reading(total=total, used=self._next(handle, "memory_used_mib") * MIB)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> Any:
        return self._next(handle, "power_w") * 1000  # NVML answers in milliwatts


def load_nvml() -> tuple[Any, str]:
    """(the NVML module or FakeNvml, its name); raises RuntimeError saying why there is none."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        return FakeNvml(fake), "fake-nvml"
    try:
        import pynvml
    except ImportError as exc:
        raise RuntimeError(f"nvidia-ml-py is not installed ({exc}); `pip install nvidia-ml-py`") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: the message names it
        raise RuntimeError(f"NVML did not start: {exc} (no NVIDIA driver library on this node?)") from exc
    return pynvml, "nvml"


class GpuSampler:
    """start() -> (generation) -> stop() -> figures(). Safe to stop twice; never raises into the worker."""

    def __init__(self, gpu_ids: Sequence[str], interval_s: float = 1.0) -> None:
        self.gpu_ids = tuple(gpu_ids)
        self.interval_s = interval_s
        self.hist = [0] * 101
        self.samples = 0
        self.mem_peak = 0
        self.mem_total = 0
        self.power_sum = 0.0
        self.power_n = 0
        self.devices: list[dict[str, Any]] = []
        self.source = ""
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.gpu_ids:
            self.error = "no GPU held"
            return
        try:
            nvml, self.source = load_nvml()
            handles = [self._resolve(nvml, g) for g in self.gpu_ids]
        except Exception as exc:
            self.error = str(exc)
            log.warning("GPU figures unavailable: %s", self.error)  # said once, by the one worker that tried
            return
        for g, h in zip(self.gpu_ids, handles, strict=True):
            name = _call(nvml, "nvmlDeviceGetName", h)
            total = _call(nvml, "nvmlDeviceGetMemoryInfo", h)
            self.devices.append(
                {
                    "id": g,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_mib": int(total.total // MIB) if total is not None else None,
                }
            )
        self._thread = threading.Thread(target=self._loop, args=(nvml, handles), name="gpu-monitor", daemon=True)
        self._thread.start()

    @staticmethod
    def _resolve(nvml: Any, gpu_id: str) -> Any:
        if gpu_id.startswith(("GPU-", "MIG-")):
            return nvml.nvmlDeviceGetHandleByUUID(gpu_id)
        if gpu_id.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
        raise ValueError(f"GPU id {gpu_id!r} is neither an index nor a UUID")

    def _loop(self, nvml: Any, handles: list[Any]) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._sample(nvml, handles)
            except Exception as exc:  # a GPU fell off the bus, NVML hiccup: keep what we have, say it once
                failures += 1
                if failures == 1:
                    log.warning("GPU sampling failed: %s (figures cover the samples before it)", exc)
                if failures >= 5:
                    self.error = f"sampling stopped after 5 failures: {exc}"
                    return
            self._stop.wait(self.interval_s)

    def _sample(self, nvml: Any, handles: list[Any]) -> None:
        readings = []
        for h in handles:
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            power = _call(nvml, "nvmlDeviceGetPowerUsage", h)
            readings.append((int(util.gpu), int(mem.used // MIB), int(mem.total // MIB), power))
        with self._lock:
            self.samples += 1
            for util_pct, used, total, power in readings:
                self.hist[min(100, max(0, util_pct))] += 1
                self.mem_peak = max(self.mem_peak, used)
                self.mem_total = max(self.mem_total, total)
                if power is not None:
                    self.power_sum += float(power) / 1000
                    self.power_n += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def figures(self) -> GpuFigures | None:
        """None when nothing was held to sample (a CPU worker); else what was measured, or why nothing was."""
        if self.error == "no GPU held":
            return None
        with self._lock:
            return GpuFigures(
                source=self.source,
                devices=list(self.devices),
                samples=self.samples,
                util_hist=list(self.hist),
                memory_used_peak_mib=self.mem_peak,
                memory_total_mib=self.mem_total,
                power_mean_w=round(self.power_sum / self.power_n, 1) if self.power_n else None,
                error=self.error,
            )


def _call(nvml: Any, name: str, handle: Any) -> Any:
    """An optional reading (name, power): some GPUs and MIG slices do not answer; that is not a failure."""
    try:
        return getattr(nvml, name)(handle)
    except Exception:
        return None


__all__ = ["FAKE_ENV", "FakeNvml", "GpuFigures", "GpuSampler", "load_nvml"]
