"""spec/slurm.py: the slurm section: resources per worker job, how many jobs, retries, extra #SBATCH options."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from launcher.spec.common import CONSTRAINT_RE, CONTROL_RE, SBATCH_VALUE_MAX, SLURM_NAME_RE, _FieldError, _Section

TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_min(text: str) -> int:
    """Slurm's time formats -> whole minutes (seconds round up): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = TIME_RE.fullmatch(text)
    if not match:
        raise ValueError(f"not a Slurm time: {text!r}")
    days, first, second, third = match.groups()
    nums = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, m, s = [*nums, 0, 0][:3]
        return int(days) * 1440 + h * 60 + m + (1 if s else 0)
    if len(nums) == 1:
        return nums[0]
    if len(nums) == 2:  # M:S
        return nums[0] + (1 if nums[1] else 0)
    h, m, s = nums
    return h * 60 + m + (1 if s else 0)


MAX_NODES = 64  # nodes one engine may span
MEM_RE = re.compile(r"^\d+(?:[KMGT])?$")
# sbatch options with a field of their own, and those the launcher/submitit write themselves.
SBATCH_FIELDS = {
    "partition": "partition",
    "p": "partition",
    "account": "account",
    "qos": "qos",
    "mem": "mem",
    "time": "time",
    "t": "time",
    "constraint": "constraint",
    "nodes": "nodes",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_gpu",
    "cpus-per-gpu": "cpus_per_gpu",
    "signal": "signal_delay_s",
}
SBATCH_OWNED = {
    "array": "one array element per task",
    "output": "log files the launcher reads",
    "error": "log files the launcher reads",
    "open-mode": "logs are appended across requeues",
    "job-name": "the spec's name",
    "wrap": "the batch script is the launcher's",
    "ntasks-per-node": "one task per node",
    "ntasks": "one task per node",
    "parsable": "job ids are parsed",
}


class SlurmSpec(_Section):
    """Resources per worker job, how many jobs, retries and requeues, extra #SBATCH options. Slurm only."""

    partition: str | None = None
    """Partition (-p). Unset: the cluster's default."""
    account: str | None = None
    """Account to charge (-A)."""
    qos: str | None = None
    """Quality of service (--qos)."""
    nodes: Literal["auto"] | int = 1
    """Nodes per task. 1: TP and DP replicas live on one node. N > 1: one engine over N nodes with vLLM's multi-node
    launch (TP inside a node, one pipeline stage per node), for models that do not fit one node. auto: the fewest
    nodes whose GPUs hold the weights (`launcher plan` says why). Models that fit one node scale out with more jobs
    (slurm.jobs / max_gpus), never by coupling nodes."""
    gpus_per_node: int = Field(default=1, ge=0, le=16)
    """GPUs per task; the task counts what it got and picks TP x DP itself."""
    cpus_per_gpu: int = Field(default=8, ge=1, le=256)
    """CPU cores per GPU (cpus per task = this x max(gpus, 1))."""
    mem: str | None = None
    """Memory per node, Slurm syntax (64G, 500000M). Unset: the cluster's default."""
    time: str = "04:00:00"
    """Time limit per task ([D-]HH:MM:SS or minutes). On timeout a task requeues and resumes."""
    constraint: str | None = None
    """Node features (-C), e.g. h100|a100."""
    array_parallelism: int | None = Field(default=None, ge=1)
    """At most this many worker jobs run at once (%N). Unset: as many as the cluster allows."""
    max_gpus: int | None = Field(default=None, ge=1, le=100_000)
    """GPUs the whole run may hold at once: it gets max_gpus / gpus_per_node worker jobs (array elements), each
    running one engine per GPU group and claiming units of work until none is left. Unset: see `jobs`."""
    jobs: int | None = Field(default=None, ge=1, le=100_000)
    """Worker jobs (array elements), when you would rather count jobs than GPUs (also on CPU). Unset, with max_gpus
    unset too: enough for 4 units per worker, at most 8 jobs. Never more than there are units."""
    max_retries: int = Field(default=2, ge=0, le=20)
    """A failing task (crash, OOM) is retried this many times, then reported with its log tail."""
    max_requeues: int = Field(default=6, ge=0, le=100)
    """Preemptions/timeouts a task may requeue after before giving up."""
    signal_delay_s: int = Field(default=120, ge=5, le=3600)
    """USR2 this long before the time limit, so the task flushes and requeues."""
    extra_args: dict[str, str | int | bool] = Field(default_factory=dict)
    """More #SBATCH options, by long name without dashes (e.g. {reservation: abc, exclusive: true})."""
    gather: bool = True
    """Submit `launcher gather` as a job that runs after the array."""

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes(cls, value: Any) -> Any:
        # One message for both forms (pydantic would report the union's two branches separately).
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_NODES):
            return value
        raise _FieldError(
            (),
            f"slurm.nodes {value!r} is not a number of nodes",
            f"a whole number from 1 to {MAX_NODES}, or auto",
            "1 for models that fit one node (more jobs scale them out); auto to let `launcher plan` pick",
        )

    @field_validator("time", mode="before")
    @classmethod
    def _time_minutes(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # `time: 90` = minutes

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not TIME_RE.fullmatch(value):
            raise ValueError("use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00)")
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not MEM_RE.fullmatch(value):
            raise ValueError("use a number with an optional K/M/G/T suffix, e.g. 64G")
        return value

    @field_validator("partition", "account", "qos")
    @classmethod
    def _slurm_name(cls, value: str | None) -> str | None:
        # These land in #SBATCH lines: a newline would start a script line, and no Slurm name has a space,
        # quote or '$' in it, so anything else is refused here rather than by sbatch after the run dir exists.
        if value is not None and not SLURM_NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a Slurm name: use 1-128 letters, digits, '_', '.', ',', '+', '-' "
                "(`sinfo -s` lists partitions, `sacctmgr show assoc user=$USER` accounts and QOS)"
            )
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is not None and not CONSTRAINT_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a Slurm feature expression: use feature names joined by & | , "
                "with [ ] ( ) * (e.g. h100|a100); no spaces, quotes, '$', ';' or newlines"
            )
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", key):
                raise _FieldError(
                    (key,),
                    f"{key!r} is not an sbatch long option name",
                    "lowercase letters, digits, '-'",
                    "write the long option without its dashes, e.g. reservation, mail-user",
                )
            if key in SBATCH_FIELDS:
                raise _FieldError(
                    (key,),
                    f"--{key} has its own field",
                    f"slurm.{SBATCH_FIELDS[key]}",
                    f"set slurm.{SBATCH_FIELDS[key]} instead (one place for each setting)",
                )
            if key in SBATCH_OWNED:
                raise _FieldError(
                    (key,),
                    f"--{key} is set by the launcher ({SBATCH_OWNED[key]})",
                    "any other sbatch long option",
                    "remove it",
                )
            if isinstance(v, str) and (CONTROL_RE.search(v) or "\\" in v or len(v) > SBATCH_VALUE_MAX):
                raise _FieldError(
                    (key,),
                    "an #SBATCH value must be one line without backslashes (a newline would "
                    "start a script line; sbatch's own parser drops backslashes); got "
                    f"{v[:80]!r}{'...' if len(v) > 80 else ''}",
                    f"one line of at most {SBATCH_VALUE_MAX} characters, no '\\'",
                    "remove the control characters and backslashes",
                )
            if v is False:  # `exclusive: false` means "leave it off"; submitit would write --exclusive=False
                continue
            out[key] = v
        return out

    @model_validator(mode="after")
    def _one_job_count(self) -> SlurmSpec:
        if self.jobs is not None and self.max_gpus is not None:
            raise _FieldError(
                ("jobs",),
                f"both jobs ({self.jobs}) and max_gpus ({self.max_gpus}) are set",
                "one of slurm.jobs or slurm.max_gpus",
                "remove one: max_gpus counts GPUs, jobs counts array elements (each with gpus_per_node GPUs)",
            )
        return self

    @model_validator(mode="after")
    def _signal_before_limit(self) -> SlurmSpec:
        if self.signal_delay_s >= self.time_min * 60:
            raise _FieldError(
                ("signal_delay_s",),
                f"signal_delay_s {self.signal_delay_s} s is not shorter than the "
                f"time limit {self.time!r} ({self.time_min} min): USR2 would come at once and every "
                "attempt would requeue without doing anything",
                f"less than {self.time_min * 60}",
                "raise slurm.time or lower slurm.signal_delay_s (e.g. a tenth of the time limit)",
            )
        return self

    @property
    def time_min(self) -> int:
        return parse_time_min(self.time)
