"""job/worker_cli.py: `python -m launcher.job.worker RUN_DIR --job J --replica R --layout JSON [--model M ...]` ->
one worker process (a job with several data-parallel workers starts one per TP group).

Several --model: the models of a sweep whose checkpoints swap weights into one running engine (job/entry.py
swap_chains), run one after the other in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path
from typing import Any

from launcher.job.start import Carry
from launcher.job.worker import PREEMPTED_EXIT, Stopped, Worker, WorkerConfig
from launcher.plan.layout import ParallelLayout

log = logging.getLogger("launcher.job")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m launcher.job.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--job", type=int, required=True)
    p.add_argument("--replica", type=int, required=True)
    p.add_argument("--layout", required=True, help="the job's ParallelLayout as JSON")
    p.add_argument("--unit", action="append", default=None, help="only these units")
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="which of the spec's models: to load (default: its one model.path); several: one after the other, "
        "their weights swapped into one engine",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    job_layout = ParallelLayout.from_dict(json.loads(args.layout))
    models: list[str] = args.model or [""]
    current: list[Worker] = []

    def on_signal(signum: int, frame: Any) -> None:
        worker = current[-1] if current else None
        if worker is None or worker.stop_requested:
            # USR2 comes twice: Slurm signals every process of the job step, and the job forwards it. Raising here
            # again would abort the first handler mid-flush, before it gave the units back.
            return
        log.warning("worker %s: %s: flushing and giving its units back", worker.cfg.slot, signal.Signals(signum).name)
        worker.stop_now()
        raise Stopped()

    signal.signal(signal.SIGUSR2, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    carry: Carry | None = None
    state = None
    for i, model in enumerate(models):
        cfg = WorkerConfig(
            Path(args.run_dir),
            args.job,
            args.replica,
            job_layout.for_replica(args.replica),
            job_layout.replica_gpus(args.replica),
            tuple(args.unit) if args.unit else None,
            model,
        )
        current.append(Worker(cfg, carry, keep_engine=i + 1 < len(models)))
        state = current[-1].run().get("state")
        carry = current[-1].carry_out
        if state == "preempted":
            break
    if carry is not None:
        carry.engine.close()
    return PREEMPTED_EXIT if state == "preempted" else 0


__all__ = ["main"]
