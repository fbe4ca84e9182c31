"""runner.py: one task, in-process: resume -> prompts -> engine -> chunk files -> done marker.

Runs inside the container on the compute node (or locally). Everything it needs is in the run directory
(spec.json, plan.json), so a requeued or resubmitted task picks up exactly where the last attempt stopped:
records already in a chunk file are never generated again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import faults
from .data import Quarantined, Record, read_shard
from .engines import EngineReport, GenerationRequest, Workload, create_engine, select_backend
from .outputs import TaskStore, write_json_atomic, write_jsonl_atomic
from .plan import Plan, RunPaths, Task
from .prompts import make_builder
from .run_state import load_run
from .seeds import record_seed
from .spec import JobSpec

log = logging.getLogger("launcher.runner")
PROGRESS_EVERY_S = 10.0


@dataclass
class TaskContext:
    spec: JobSpec
    task: Task
    store: TaskStore

    @classmethod
    def open(cls, run_dir: Path, index: int) -> TaskContext:
        spec, tasks = load_run(run_dir)
        if not 0 <= index < len(tasks):
            raise IndexError(f"task index {index} out of range: the run has {len(tasks)} tasks (0..{len(tasks) - 1})")
        task = tasks[index]
        return cls(spec, task, TaskStore(RunPaths(Path(spec.output.dir), spec.run_id).task_dir(task)))


@dataclass
class Prepared:
    requests: list[GenerationRequest]
    records: dict[int, Record]
    prompts: dict[int, str]
    quarantined: list[Quarantined] = field(default_factory=list)
    total_valid: int = 0


def load_tokenizer(spec: JobSpec) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)


def chat_formatter(tokenizer: Any) -> Any:
    if not getattr(tokenizer, "chat_template", None):
        return None
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prepare(ctx: TaskContext, tokenizer: Any) -> Prepared:
    """Records of the shard -> token ids, minus bad rows (quarantined) and rows already done."""
    spec, task = ctx.spec, ctx.task
    records, bad = read_shard(Path(task.data_path), task.start, task.stop, spec.data.fields)
    seen: dict[str, int] = {}
    kept: list[Record] = []
    for rec in records:
        if rec.record_id in seen:
            first = seen[rec.record_id]
            bad.append(Quarantined(rec.row, f"duplicate record id {rec.record_id!r} (first at row {first})",
                                   rec.record_id))
            continue
        seen[rec.record_id] = rec.row
        kept.append(rec)
    chat = chat_formatter(tokenizer)
    builder = make_builder(spec.data, task.ablation, chat)
    limit = _token_limit(spec, tokenizer)
    prompts: dict[int, str] = {}
    requests: list[GenerationRequest] = []
    done = ctx.store.done_rows()
    valid: dict[int, Record] = {}
    for rec in kept:
        text = builder.build(rec)
        ids = tokenizer(text, add_special_tokens=chat is None)["input_ids"]
        if limit is not None and len(ids) + spec.sampling.max_tokens > limit:
            bad.append(Quarantined(rec.row, f"prompt of {len(ids)} tokens + max_tokens {spec.sampling.max_tokens} "
                                            f"exceeds the context length {limit}", rec.record_id))
            continue
        valid[rec.row] = rec
        if rec.row in done:
            continue
        prompts[rec.row] = text
        requests.append(GenerationRequest(rec.row, ids, record_seed(spec.sampling.seed, rec.record_id)))
    # Longest first: similar lengths batch together, and the long tail does not finish alone at the end.
    requests.sort(key=lambda r: (-len(r.prompt_token_ids), r.key))
    bad.sort(key=lambda q: q.row)
    return Prepared(requests, valid, prompts, bad, len(valid))


def _token_limit(spec: JobSpec, tokenizer: Any) -> int | None:
    from .modelinfo import read_config

    limits = [spec.model.max_model_len] if spec.model.max_model_len else []
    with contextlib.suppress(OSError, ValueError):
        limits.append(int(read_config(spec.model.path).get("max_position_embeddings") or 0) or 1 << 30)
    return min(limits) if limits else None


class ChunkWriter:
    """Writes finished records in chunks on a background thread, so disk I/O overlaps generation."""

    def __init__(self, ctx: TaskContext, prepared: Prepared, replica: int) -> None:
        self.ctx, self.prepared, self.replica = ctx, prepared, replica
        self.buffer: list[dict[str, Any]] = []
        self.lock = threading.RLock()  # flush_now() runs from a signal handler that may interrupt add()
        self.queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        self.error: BaseException | None = None
        self.records = self.samples = self.output_tokens = self.prompt_tokens = 0

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.buffer.append(row)
            self.records += 1
            self.samples += len(row["generated_samples"])
            self.output_tokens += sum(row["sample_tokens"])
            self.prompt_tokens += row["prompt_tokens"]
            if len(self.buffer) >= self.ctx.spec.output.chunk_records:
                self.queue.put(self.buffer)
                self.buffer = []

    def _drain(self) -> None:
        while (rows := self.queue.get()) is not None:
            try:
                self.ctx.store.write_chunk(self.replica, rows)
            except BaseException as exc:  # surfaced by close()
                self.error = exc

    def flush_now(self) -> None:
        """Called on preemption (from submitit's signal handler): whatever is finished reaches the disk."""
        with self.lock:
            rows, self.buffer = self.buffer, []
        if rows:
            self.queue.put(rows)
        self.close()

    def close(self) -> None:
        with self.lock:
            if self.buffer:
                self.queue.put(self.buffer)
                self.buffer = []
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def run_replica(ctx: TaskContext, replica: int = 0, replicas: int = 1, layout: Any = None,
                on_writer: Any = None) -> dict[str, Any]:
    """Generate this replica's share (rows with row % replicas == replica) of what is left of the task."""
    t_start = time.perf_counter()
    phases: dict[str, float] = {"before_replica_s": round(process_age_s(), 3)}
    spec = ctx.spec
    tokenizer = load_tokenizer(spec)
    phases["tokenizer_s"] = round(time.perf_counter() - t_start, 3)
    prepared = prepare(ctx, tokenizer)
    phases["prepare_s"] = round(time.perf_counter() - t_start - phases["tokenizer_s"], 3)
    if replicas > 1:
        prepared.requests = [r for r in prepared.requests if r.key % replicas == replica]
    backend, why = select_backend(spec.model)
    info: dict[str, Any] = {"task_id": ctx.task.task_id, "replica": replica, "host": socket.gethostname(),
                            "backend": backend, "backend_reason": why, "records_todo": len(prepared.requests),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}
    if not prepared.requests:
        return info
    engine = create_engine(backend, spec.model, spec.sampling, spec.data.num_samples)
    if layout is not None:
        engine.layout = layout  # type: ignore[attr-defined]
    workload = Workload(tuple(len(r.prompt_token_ids) for r in prepared.requests), spec.sampling.max_tokens,
                        spec.data.num_samples)
    t_engine = time.perf_counter()
    report: EngineReport = engine.load(workload, tokenizer)
    startup = time.perf_counter() - t_start
    phases["engine_load_s"] = round(time.perf_counter() - t_engine, 3)
    log.info("task %s replica %d: %s %s on %s, started in %.1fs; %d records to do", ctx.task.task_id, replica,
             report.backend, report.version, report.gpu_name or report.device, startup, len(prepared.requests))
    writer = ChunkWriter(ctx, prepared, replica)
    if on_writer is not None:
        on_writer(writer)
    t_gen = time.perf_counter()
    last = t_gen
    try:
        for done, comp in enumerate(engine.generate(prepared.requests), 1):
            rec = prepared.records[comp.key]
            row = {
                "row": rec.row, "record_id": rec.record_id, "user_id": rec.user_id, "dataset": ctx.task.dataset,
                "ablation": ctx.task.ablation, "prompt": prepared.prompts[rec.row],
                "generated_samples": [s.text for s in comp.samples], "prompt_tokens": comp.prompt_tokens,
                "sample_tokens": [s.num_tokens for s in comp.samples],
                "finish_reasons": [s.finish_reason for s in comp.samples],
                "seed": record_seed(spec.sampling.seed, rec.record_id),
            }
            if spec.output.token_ids:
                row["sample_token_ids"] = [list(s.token_ids) for s in comp.samples]
            writer.add(row)
            faults.after_record(ctx.task.task_id, ctx.store.root, replica, writer.records)  # test-only, inert
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                log.info("task %s: %d/%d records, %.2f samples/s", ctx.task.task_id, done, len(prepared.requests),
                         writer.samples / (now - t_gen))
    finally:
        writer.close()
        engine.close()
    gen_s = time.perf_counter() - t_gen
    info.update({
        "engine": {"version": report.version, "device": report.device, "gpu_name": report.gpu_name,
                   "settings": report.settings, "reasons": report.reasons, "startup": report.startup},
        "startup_seconds": round(startup, 3), "load_seconds": round(report.load_seconds, 3),
        "startup_phases": phases,
        "inference_time_seconds": round(gen_s, 3), "records": writer.records, "samples": writer.samples,
        "output_tokens": writer.output_tokens, "prompt_tokens": writer.prompt_tokens,
    })
    return info


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): the interpreter start, imports and plan
    loading that come before the replica's own clock, which the start-up split would otherwise miss."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def run_task(run_dir: Path, index: int) -> dict[str, Any]:
    """The in-task entry point (Slurm array element, local executor, or `launcher run`)."""
    return TaskRun(run_dir, index).run()


class TaskRun:
    """One attempt at one task. Holds the live writer so a preemption signal can flush it."""

    def __init__(self, run_dir: Path, index: int) -> None:
        self.run_dir, self.index = Path(run_dir), index
        self.writer: ChunkWriter | None = None

    def run(self) -> dict[str, Any]:
        ctx = TaskContext.open(self.run_dir, self.index)
        if ctx.store.is_done():
            log.info("task %s already done", ctx.task.task_id)
            return _read_json(ctx.store.done_marker)
        from .compile_cache import CACHE_ENV
        from .layout import allocated_gpus, choose_layout, gpu_info
        from .modelinfo import model_shape

        # The compile cache lives beside the outputs (shared storage) unless the user pointed it elsewhere: every
        # array task of this job, on any node, then starts from what the first one compiled. DP replicas inherit it.
        os.environ.setdefault(CACHE_ENV, str(Path(ctx.spec.output.dir) / "cache" / "compile"))
        t0 = time.perf_counter()
        backend, _ = select_backend(ctx.spec.model)  # imports the backend (vLLM: most of a warm start's first 20 s)
        t1 = time.perf_counter()
        gpus = allocated_gpus()
        tp_request = 1 if backend == "hf" else ctx.spec.model.tensor_parallel_size
        layout = choose_layout(model_shape(ctx.spec.model.path), gpus, gpu_info() if gpus.count else None,
                               ctx.spec.model.gpu_memory_utilization, tp_request)
        # Where the time before the replica's own clock goes (process start -> here is in its before_replica_s).
        pre = {"backend_import_s": round(t1 - t0, 3), "layout_s": round(time.perf_counter() - t1, 3)}
        started = time.time()
        if layout.data_parallel > 1:
            infos = self._run_replicas(ctx, layout)
        else:
            infos = [run_replica(ctx, 0, 1, layout, on_writer=self._keep)]
        attempt = {"started": started, "ended": time.time(), "layout": layout.as_dict(), "replicas": infos,
                   "startup_before_replicas": pre}
        ctx.store.write_attempt(attempt)
        return finalize(ctx)

    def _keep(self, writer: ChunkWriter) -> None:
        self.writer = writer

    def _run_replicas(self, ctx: TaskContext, layout: Any) -> list[dict[str, Any]]:
        """DP > 1: one process per replica, each on its own GPUs, each writing its own chunk files."""
        procs = []
        for r in range(layout.data_parallel):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(layout.replica_gpus(r)))
            out = ctx.store.root / f"replica-{r}.json"
            cmd = [sys.executable, "-m", "launcher.replica", str(self.run_dir), str(self.index), str(r),
                   str(layout.data_parallel), str(out)]
            procs.append((r, out, subprocess.Popen(cmd, env=env)))
        infos, failed = [], []
        for r, out, proc in procs:
            if proc.wait() != 0:
                failed.append(f"replica {r} exited with {proc.returncode}")
            elif out.exists():
                infos.append(_read_json(out))
        if failed:
            raise RuntimeError(f"task {ctx.task.task_id}: {'; '.join(failed)}; finished chunks are kept, rerun resumes")
        return infos

    def checkpoint(self) -> None:
        if self.writer is not None:
            self.writer.flush_now()


def _read_json(path: Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(path.read_text())
    return data


def finalize(ctx: TaskContext) -> dict[str, Any]:
    """All rows of the shard are in chunks or quarantined -> done.json. Else say what is missing."""
    tokenizer = load_tokenizer(ctx.spec)
    prepared = prepare(ctx, tokenizer)
    write_jsonl_atomic(ctx.store.quarantine, [{"row": q.row, "reason": q.reason, "raw": q.raw}
                                              for q in prepared.quarantined])
    if prepared.requests:
        raise RuntimeError(f"task {ctx.task.task_id}: {len(prepared.requests)} records still missing after the run")
    attempts = ctx.store.read_attempts()
    replicas = [r for a in attempts for r in a.get("replicas", []) if r.get("records")]
    summary = {
        "task_id": ctx.task.task_id, "index": ctx.task.index, "dataset": ctx.task.dataset,
        "ablation": ctx.task.ablation, "rows": ctx.task.rows, "records": prepared.total_valid,
        "quarantined": len(prepared.quarantined), "num_samples": ctx.spec.data.num_samples,
        "attempts": len(attempts),
        "inference_time_seconds": round(sum(r["inference_time_seconds"] for r in replicas), 3),
        "startup_seconds": round(max((r["startup_seconds"] for r in replicas), default=0.0), 3),
        "generated_samples": sum(r["samples"] for r in replicas),
        "output_tokens": sum(r["output_tokens"] for r in replicas),
        "last_layout": attempts[-1]["layout"] if attempts else None,
        "engine": next((r["engine"] for r in reversed(replicas)), None),
        "backend": next((r["backend"] for r in reversed(replicas)), None),
        "backend_reason": next((r["backend_reason"] for r in reversed(replicas)), None),
    }
    write_json_atomic(ctx.store.done_marker, summary)
    return summary


def run_tasks_inline(plan: Plan, indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    return [run_task(plan.paths.run_dir, i) for i in (indices if indices is not None else range(len(plan.tasks)))]
