"""submit/fit.py: is there a Slurm here (its commands on PATH), and does the spec's request per job (CPUs, GPUs,
memory) fit the nodes of its partition? Asked at submit, before anything is written.

A job asking more of one node than any node of the partition has is accepted by sbatch and then stays PENDING
(PartitionConfig) forever. Found by asking `gpus_per_node: 2` with the default `cpus_per_gpu: 8` on an 8-CPU node.
`sinfo` is asked once per submit; when it cannot answer (no Slurm here), nothing is checked.
Also: Slurm's pending reasons in words, for `status`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from launcher.errors import NoSlurm, SpecError
from launcher.spec import JobSpec

# What a submit runs: sbatch submits the array (and the gather job), srun starts each task in it (submitit refuses
# to build a Slurm executor without it). squeue/sacct/scancel only serve status and cancel, which say so themselves.
SUBMIT_COMMANDS = ("sbatch", "srun")


def missing_slurm_commands() -> list[str]:
    """Slurm's submit commands that are not on PATH here (empty: a Slurm client is installed)."""
    return [c for c in SUBMIT_COMMANDS if shutil.which(c) is None]


def require_slurm(where: str = "--executor slurm") -> None:
    """NoSlurm (exit 2) unless sbatch and srun are on PATH: before anything is written, so a machine without Slurm
    gets a sentence and a fix, not submitit's RuntimeError and a half-made run folder."""
    missing = missing_slurm_commands()
    if not missing:
        return
    raise NoSlurm.one(
        where,
        "executor",
        f"{' and '.join(missing)} not found on PATH: this machine has no Slurm client (or it is not on PATH)",
        allowed="slurm (where sbatch and srun run), or local (this machine's processes, no cluster)",
        fix="run it on your cluster's login node; or put Slurm's bin folder on PATH (e.g. "
        "`export PATH=/opt/slurm/bin:$PATH`; `apt-get install slurm-client` installs the commands, which also need "
        "the cluster's slurm.conf); or run here with `--executor local` (`--set executor=local` in `launcher plan`)",
    )


@dataclass(frozen=True)
class NodeCaps:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


def _gpu_count(gres: str) -> int:
    """gres like 'gpu:4', 'gpu:h100:8(S:0-1)', 'gpu:a100:2,shard:8' -> GPUs."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts and parts[0] == "gpu":
            count = parts[-1]
            total += int(count) if count.isdigit() else 1
    return total


def partition_nodes(partition: str | None) -> list[NodeCaps] | None:
    """The nodes of the partition (its default when None), or None when sinfo cannot tell."""
    if not shutil.which("sinfo"):
        return None
    # Without -p, sinfo lists the nodes of every partition, not the default's (sbatch's): ask which that is.
    partition = partition or _default_partition()
    out = _sinfo(["-N", "-o", "%N|%c|%m|%G"] + (["-p", partition] if partition else []))
    if out is None:
        return None
    nodes = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) != 4 or not fields[1].isdigit():
            continue
        mem = re.match(r"\d+", fields[2])
        nodes[fields[0]] = NodeCaps(fields[0], int(fields[1]), int(mem.group()) if mem else 0, _gpu_count(fields[3]))
    return list(nodes.values())


def _default_partition() -> str | None:
    """The partition sbatch uses when none is named (sinfo marks it with '*'); None when there is none."""
    out = _sinfo(["-o", "%P"])
    return next((p.rstrip("*") for p in (out or "").split() if p.endswith("*")), None)


def _sinfo(args: list[str]) -> str | None:
    try:
        out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _mem_mb(text: str | None) -> int | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+)([KMGT]?)", text)
    if not m:
        return None
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * factor)


def check_fits(spec: JobSpec) -> None:
    """SpecError (exit 2, nothing submitted) when no node of the partition can ever run one job of this spec."""
    s = spec.slurm
    nodes = partition_nodes(s.partition)
    if not nodes:
        return
    cpus = s.cpus_per_gpu * max(1, s.gpus_per_node)
    mem = _mem_mb(s.mem)
    fits = [n for n in nodes if n.cpus >= cpus and n.gpus >= s.gpus_per_node and (mem is None or n.mem_mb >= mem)]
    if fits:
        return
    part = s.partition or "the default partition"
    best_cpu = max(nodes, key=lambda n: n.cpus)
    best_gpu = max(nodes, key=lambda n: n.gpus)
    best_mem = max(nodes, key=lambda n: n.mem_mb)
    if max(n.gpus for n in nodes) < s.gpus_per_node:
        raise SpecError.one(
            spec.where("slurm", "gpus_per_node"),
            "slurm.gpus_per_node",
            f"{s.gpus_per_node} GPUs per job, but no node of {part} has that many (the most is "
            f"{best_gpu.gpus}, on {best_gpu.name}): the job would stay PENDING forever",
            allowed=f"at most {best_gpu.gpus}",
            fix=f"set slurm.gpus_per_node: {best_gpu.gpus} or fewer (more jobs run side by side: "
            "slurm.max_gpus), or choose another slurm.partition",
        )
    if max(n.cpus for n in nodes) < cpus:
        per = max(1, best_cpu.cpus // max(1, s.gpus_per_node))
        raise SpecError.one(
            spec.where("slurm", "cpus_per_gpu"),
            "slurm.cpus_per_gpu",
            f"{cpus} CPUs per job (cpus_per_gpu {s.cpus_per_gpu} x {max(1, s.gpus_per_node)} GPU(s)), "
            f"but no node of {part} has that many (the most is {best_cpu.cpus}, on {best_cpu.name}): "
            "the job would stay PENDING forever",
            allowed=f"at most {best_cpu.cpus} CPUs per job",
            fix=f"set slurm.cpus_per_gpu: {per}",
        )
    if mem is not None and max(n.mem_mb for n in nodes) < mem:
        raise SpecError.one(
            spec.where("slurm", "mem"),
            "slurm.mem",
            f"{s.mem} of memory per job, but no node of {part} has that much (the most is "
            f"{best_mem.mem_mb} MB, on {best_mem.name}): the job would stay PENDING forever",
            allowed=f"at most {best_mem.mem_mb}M",
            fix=f"set slurm.mem: {best_mem.mem_mb // 1024}G or less, or leave it unset (the cluster's default)",
        )
    raise SpecError.one(
        spec.where("slurm"),
        "slurm",
        f"no single node of {part} has {cpus} CPUs, "
        f"{s.gpus_per_node} GPU(s) and {s.mem or 'the default memory'} together: the job would stay "
        "PENDING forever",
        allowed=", ".join(f"{n.name}: {n.cpus} CPUs, {n.gpus} GPUs, {n.mem_mb} MB" for n in nodes[:5]),
        fix="ask for what one node has (slurm.cpus_per_gpu, slurm.gpus_per_node, slurm.mem)",
    )


PENDING_REASONS = {
    "Resources": "waiting for free nodes/GPUs",
    "Priority": "other jobs come first (priority)",
    "PartitionConfig": "asks more than any node of the partition has: it can never start (cancel and fix the spec)",
    "JobArrayTaskLimit": "the array's own limit of jobs at once (slurm.array_parallelism)",
    "Dependency": "waiting for the jobs it depends on",
    "DependencyNeverSatisfied": "its dependency failed: it will never start",
    "BeginTime": "requeued: held back until its begin time",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "QOSMaxGRESPerUser": "your QOS allows no more GPUs at once",
    "QOSMaxJobsPerUserLimit": "your QOS allows no more jobs at once",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "AssocGrpCPULimit": "your account's CPU limit is reached",
    "AssocMaxJobsLimit": "your account's job limit is reached",
    "JobHeldUser": "held by you (scontrol release JOBID)",
    "JobHeldAdmin": "held by an administrator",
    "PartitionTimeLimit": "its time limit exceeds the partition's: it can never start (lower slurm.time)",
    "PartitionNodeLimit": "asks more nodes than the partition allows",
    "InvalidAccount": "the account is not valid for you",
    "InvalidQOS": "the QOS is not valid for you",
    "NodeDown": "a node it needs is down",
    "launch failed requeued held": "its launch failed; Slurm holds it (scontrol release JOBID)",
}


def reason_words(reason: str) -> str:
    if not reason:
        return ""
    words = PENDING_REASONS.get(reason) or next((v for k, v in PENDING_REASONS.items() if reason.startswith(k)), "")
    return f"{reason}: {words}" if words else reason


__all__ = ["NodeCaps", "check_fits", "partition_nodes", "reason_words"]
