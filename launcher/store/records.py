"""store/records.py: the typed shapes of what the run directory holds as JSON, shared by the side that writes
(job/) and the sides that read (gather/, submit/status). TypedDicts: the files stay plain JSON, and mypy checks
every key either side uses.
"""

from __future__ import annotations

from typing import Any, TypedDict


class OutputRow(TypedDict, total=False):
    """One record's line in a chunk and in samples.jsonl."""

    row: int  # its row in the dataset file: unique within a (dataset, ablation)
    record_id: str
    user_id: str
    dataset: str
    ablation: str
    prompt: str
    generated_samples: list[str]
    prompt_tokens: int
    sample_tokens: list[int]
    finish_reasons: list[str]
    seed: int
    sample_token_ids: list[list[int]]  # only with output.token_ids
    num_samples: int  # only when the record asked for its own n (an OpenAI batch line)
    model: str  # only in a sweep over several models (the spec's models: name)
    adapter: str  # only in a sweep over LoRA adapters (model.adapters name)


class UnitDone(TypedDict, total=False):
    """units/<id>/done.json: every row written or quarantined; the chunks that hold them, with their checksums."""

    unit_id: str
    rows: int
    records: int
    quarantined: int
    chunks: dict[str, str]  # chunk file name -> sha256[:16]
    worker: str
    generation: int
    finished_at: float


class GpuFigures(TypedDict, total=False):
    """What one worker's report holds under "gpu_monitor" (and what merges into a run's figures)."""

    source: str  # "nvml" or "fake-nvml"
    devices: list[dict[str, Any]]  # id, name, memory_total_mib
    samples: int  # sampling instants (each covers every GPU)
    util_hist: list[int]  # 101 counts: how many (GPU, instant) pairs showed 0..100 % SM utilization
    memory_used_peak_mib: int
    memory_total_mib: int  # per GPU (the largest, when they differ)
    power_mean_w: float | None
    error: str | None  # why there are no figures


class WorkerReport(TypedDict, total=False):
    """workers/<slot>-r<restart>-<pid>.json: one worker process, by the wall clock."""

    slot: str  # "<job index>.<replica>"
    job_index: int
    replica: int
    host: str
    pid: int
    job_id: str | None
    restart: int
    gpus: list[str]
    tensor_parallel_size: int
    model: str  # the spec's models: name this engine loaded ("" for its one model.path)
    state: str  # starting, loading, running, done, idle, preempted, failed
    started: float
    engine_ready_at: float | None
    first_request_at: float | None
    last_write_at: float | None
    ended: float | None
    heartbeat_at: float
    units_done: list[str]
    current_units: list[str]
    unit_windows: dict[str, list[Any]]  # unit -> [first request, last write, samples, output tokens]
    records: int
    samples: int
    output_tokens: int
    prompt_tokens: int
    quarantined: int  # records the engine could not generate (each quarantined alone, with why)
    startup_phases: dict[str, float]
    startup_timeline: dict[str, list[float]]  # phase -> [start, end], seconds from `started` (what ran beside what)
    error: str | None
    warnings: list[str]
    backend: str
    backend_reason: str
    engine: dict[str, Any]  # version, device, gpu_name, settings, reasons, startup
    workload: dict[str, Any]
    prefix_order: dict[str, Any]  # scheduling.prefix_order: on or off and why, the groups measured (job/order.py)
    gpu_monitor: GpuFigures  # job/gpu_monitor.py: utilization histogram, peak memory, power (GPU workers)
    cpu_cores: int  # cores this process may run on (its CPU affinity)
    cpu_seconds: float  # CPU time (user + system) the worker's process used since the worker started


__all__ = ["GpuFigures", "OutputRow", "UnitDone", "WorkerReport"]
