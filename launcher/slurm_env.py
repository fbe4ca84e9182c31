"""slurm_env.py: the one place that reads Slurm's (and submitit's) variables about the job this process runs in.

Like submitit's JobEnvironment: every other module asks `SlurmEnv.current()` instead of reading os.environ.

    SLURM_JOB_ID           this job's own id (an array element has its own); kept across requeues
    SLURM_ARRAY_JOB_ID     the array's id (the submission), SLURM_ARRAY_TASK_ID the element's index
    SLURM_RESTART_COUNT    0 on the first run, +1 per requeue (preemption, time limit, a retry)
    SUBMITIT_EXECUTOR      "slurm" inside a job submitit started (not merely inside some allocation)
    SLURM_STEP_GPUS, SLURM_JOB_GPUS   the GPUs as the node's driver numbers them (container.py hands those to
                           docker/podman, whose daemons see the whole node)
    SLURM_GPUS_ON_NODE     a count only
    SLURM_NNODES, SLURM_PROCID, SLURM_NODEID   a step over several nodes: how many, this task's rank and node
    SLURM_LAUNCH_NODE_IPADDR   srun's address (task 0 runs there), SLURM_JOB_NODELIST the nodes
GPU *numbering as this process sees it* is CUDA_VISIBLE_DEVICES first (layout.allocated_gpus): Slurm sets it to
what the job may use, and CUDA numbers from it. The node-side ids above are for the container shim.
Both read a list of GPUs with one parser, `parse_gpu_ids`: Slurm may compress ranges ("0-3", "0,2-3").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmEnv:
    job_id: str | None
    array_job_id: str | None
    array_task_id: str | None
    restart: int
    submitit_executor: str | None
    step_gpus: str | None
    job_gpus: str | None
    gpus_on_node: int | None
    nnodes: int = 1
    proc_id: int | None = None  # this task's rank in its srun step; None outside a step
    node_id: int | None = None
    launch_addr: str | None = None
    node_list: str | None = None

    @classmethod
    def current(cls, env: Mapping[str, str] | None = None) -> SlurmEnv:
        env = os.environ if env is None else env
        count = (env.get("SLURM_GPUS_ON_NODE") or "").strip()
        return cls(
            env.get("SLURM_JOB_ID") or None,
            env.get("SLURM_ARRAY_JOB_ID") or None,
            env.get("SLURM_ARRAY_TASK_ID") or None,
            int(env.get("SLURM_RESTART_COUNT") or 0),
            env.get("SUBMITIT_EXECUTOR") or None,
            env.get("SLURM_STEP_GPUS"),
            env.get("SLURM_JOB_GPUS"),
            int(count) if count.isdigit() else None,
            int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1),
            _int_or_none(env.get("SLURM_PROCID")),
            _int_or_none(env.get("SLURM_NODEID")),
            env.get("SLURM_LAUNCH_NODE_IPADDR") or None,
            env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or None,
        )

    @property
    def in_job(self) -> bool:
        """Inside a Slurm job (an allocation of some kind): outputs wait out full or read-only storage then."""
        return self.job_id is not None

    @property
    def submitted_by_submitit(self) -> bool:
        """Inside a job that submitit's sbatch started: only such a job may be requeued by us."""
        return self.job_id is not None and self.submitit_executor == "slurm"

    @property
    def element_id(self) -> str | None:
        """submitit's id of this job: "123_4" for an array element, "123" for a single job (names its logs)."""
        if self.job_id is None:
            return None
        return f"{self.array_job_id}_{self.array_task_id}" if self.array_job_id and self.array_task_id else self.job_id

    @property
    def submission(self) -> str | None:
        """The array's id (or the job's): retries are counted per submission."""
        return self.array_job_id or self.job_id


NO_GPU = frozenset({"", "nodevfiles", "none", "-1", "void"})  # how Slurm and CUDA say "no GPU" (any case)
MAX_RANGE = 4096  # a range wider than any node's GPUs is kept as written, never expanded into millions of ids


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """A GPU list as Slurm or CUDA writes it -> its ids, in order: "0,2-3" -> ("0", "2", "3"). An index, a range of
    indices, or a GPU-/MIG- UUID (kept whole: its dashes are not a range); "-1", NoDevFiles and empty mean none."""
    if text.strip().lower() in NO_GPU:
        return ()
    ids: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item or item == "-1":
            continue
        first, dash, last = item.partition("-")
        if dash and first.isdigit() and last.isdigit() and 0 <= int(last) - int(first) < MAX_RANGE:
            ids += [str(i) for i in range(int(first), int(last) + 1)]
        else:
            ids.append(item)  # an index, or a GPU-/MIG- UUID
    return tuple(ids)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


__all__ = ["NO_GPU", "SlurmEnv", "parse_gpu_ids"]
