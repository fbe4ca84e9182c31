"""engines/multinode.py: one task over several Slurm nodes, with vLLM's own multi-node launch (no Ray).

One srun step, one task per node (`--ntasks-per-node=1 --kill-on-bad-exit=1`). Task 0 runs the worker and its
engine: `LLM(..., nnodes=N, node_rank=0, master_addr=A, master_port=P)`. Every other task runs vLLM headless on its
node (what `vllm serve --headless --nnodes N --node-rank R` does: a MultiprocExecutor whose workers join rank 0's
engine over torch.distributed) until rank 0 says it is done. Hazards peers met, and what this module does about each:

- Apptainer's --cleanenv strips SLURM_*: ranks are read from SLURM_PROCID / SLURM_NODEID / SLURM_NNODES, which the
  container shim reads outside the image and forwards (containers/runtimes.py FORWARDED_ENV_PREFIXES).
- vLLM probes an outside address for its own IP unless told: VLLM_HOST_IP is set per rank to the address that
  routes to the master, and NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME to the interface that holds it (a user's own
  values win).
- A VLLM_PORT inherited from the environment makes every rank bind the same port: unset.
- Start-up deadlocks with VLLM_ALLREDUCE_USE_SYMM_MEM on: set to 0.
- A requeued job must never read a stale rendezvous: its files live in multinode/<job id>-r<restart>/ and the master
  port is derived from the same pair.
- The wait for readiness (rank 0's engine for its peers; a peer for rank 0's engine arguments) is bounded by the
  job's remaining walltime: past it the rank exits non-zero, srun ends the step, the teardown requeues it.
- The loss of a rank (node failure, preemption of one node) ends the step at once (--kill-on-bad-exit=1); the
  teardown records the failure and requeues it while slurm.max_retries allows; records already written stay.

Data parallelism over nodes stays what the array already does (independent jobs): this is for models that do not fit
one node.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.slurm_env import SlurmEnv
from launcher.store import RunDir

log = logging.getLogger("launcher.job")
PORT_BASE, PORT_SPAN = 20000, 20000  # the master port: PORT_BASE + (job id, restart) mod PORT_SPAN
READY_MARGIN_S = 60.0  # stop waiting this long before the time limit, so the requeue happens in time
POLL_S = 0.5
UNKNOWN_WALLTIME_S = 3600.0  # no way to ask Slurm for the time left (scontrol missing in the image): wait this long


@dataclass(frozen=True)
class NodeGroup:
    """This task's place in a multi-node step."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    host_ip: str  # this node's address toward the master (VLLM_HOST_IP)
    ifname: str | None  # the interface holding host_ip (NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME)
    job_id: str
    restart: int

    @classmethod
    def current(cls, env: Mapping[str, str] | None = None) -> NodeGroup | None:
        """None unless this process is one task of a step over several nodes."""
        env = os.environ if env is None else env
        slurm = SlurmEnv.current(env)
        if slurm.nnodes <= 1 or slurm.proc_id is None:
            return None
        job_id = slurm.job_id or "0"
        # Task 0 runs on the first node of the allocation, where the batch script (and so srun) runs: srun's
        # address is rank 0's. LAUNCHER_MASTER_ADDR overrides it (a cluster whose launch address is not reachable
        # over the fast network).
        master = env.get("LAUNCHER_MASTER_ADDR") or slurm.launch_addr or _first_node_addr(slurm.node_list or "")
        host_ip = env.get("VLLM_HOST_IP") or route_address(master)
        return cls(
            nnodes=slurm.nnodes,
            node_rank=slurm.node_id if slurm.node_id is not None else slurm.proc_id,
            master_addr=master,
            master_port=master_port(job_id, slurm.restart),
            host_ip=host_ip,
            ifname=interface_of(host_ip),
            job_id=job_id,
            restart=slurm.restart,
        )

    @property
    def tag(self) -> str:
        return f"{self.job_id}-r{self.restart}"

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM's multi-node arguments for this rank (the same on every rank but node_rank)."""
        return {
            "nnodes": self.nnodes,
            "node_rank": self.node_rank,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "distributed_executor_backend": "mp",
        }

    def apply_env(self, cpu: bool, env: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
        """Set the variables each hazard above needs; returns what was set (for the worker's report)."""
        target = os.environ if env is None else env
        wanted = {"VLLM_HOST_IP": self.host_ip, "VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}
        if cpu:
            from launcher.engines.vllm.cpu_env import CPU_KV_CACHE_GIB

            # vLLM's CPU build binds each worker's threads to cores; ranks that share a machine (the test cluster's
            # two nodes) must not bind the same ones. One core per rank: the CPU path is for tests, not speed.
            allowed = sorted(os.sched_getaffinity(0))
            wanted["VLLM_CPU_OMP_THREADS_BIND"] = str(allowed[self.node_rank % len(allowed)])
            wanted["VLLM_CPU_KVCACHE_SPACE"] = CPU_KV_CACHE_GIB  # as one engine on the CPU gets it
        if self.ifname:
            wanted["NCCL_SOCKET_IFNAME"] = self.ifname
            wanted["GLOO_SOCKET_IFNAME"] = self.ifname
        done = {}
        for key, value in wanted.items():
            if key == "VLLM_HOST_IP" or key not in target:  # a user's interface choice wins; the IP is per rank
                target[key] = value
                done[key] = value
        if target.pop("VLLM_PORT", None) is not None:
            done["VLLM_PORT"] = "(unset)"
        return done


def master_port(job_id: str, restart: int) -> int:
    """A port of its own per (job, restart): a requeued job never meets a socket its last attempt left behind."""
    digits = int("".join(c for c in job_id if c.isdigit()) or 0)
    return PORT_BASE + (digits * 7 + restart) % PORT_SPAN


def route_address(peer: str) -> str:
    """This host's address on the route to `peer` (a UDP connect sends nothing)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((peer, 9))
        return str(s.getsockname()[0])
    return socket.gethostbyname(socket.gethostname())


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` (Linux: SIOCGIFADDR per interface); None when none does."""
    siocgifaddr = 0x8915
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                raw = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
                if socket.inet_ntoa(raw[20:24]) == address:
                    return name
    return None


def _first_node_addr(nodes: str) -> str:
    """The first node's NodeAddr, as Slurm reaches it (its name may not resolve here)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        first = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=20, check=True
        ).stdout.split()[0]
        info = subprocess.run(
            ["scontrol", "show", "node", first, "-o"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
        return next(f.split("=", 1)[1] for f in info.split() if f.startswith("NodeAddr="))
    return nodes.split(",")[0] or "127.0.0.1"


def seconds_left(env: Mapping[str, str] | None = None) -> float:
    """The job's remaining walltime from Slurm (squeue %L), or UNKNOWN_WALLTIME_S when it cannot say."""
    job = SlurmEnv.current(env).job_id
    if not job:
        return UNKNOWN_WALLTIME_S
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        text = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
        return parse_slurm_duration(text)
    return UNKNOWN_WALLTIME_S


def parse_slurm_duration(text: str) -> float:
    """[D-]HH:MM:SS, MM:SS or UNLIMITED -> seconds."""
    if not text or text.upper() in ("UNLIMITED", "INVALID", "NOT_SET"):
        return UNKNOWN_WALLTIME_S
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return float(int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2])


def ready_deadline(env: Mapping[str, str] | None = None) -> float:
    """When to give up waiting for the other ranks: before the time limit, so the requeue comes in time."""
    left = seconds_left(env)
    return time.time() + max(30.0, left - max(READY_MARGIN_S, 0.1 * left))


class Rendezvous:
    """multinode/<job>-r<restart>/ in the run directory (shared storage, RunDir.multinode): rank 0's engine
    arguments, each rank's address, and rank 0's done mark. Named by job and restart: a requeued job starts with an
    empty folder. The engine arguments decide what the other nodes run: read as a trusted file (RunDir)."""

    def __init__(self, run_dir: Path, group: NodeGroup) -> None:
        self.run = RunDir(run_dir)
        self.folder = self.run.multinode(group.tag)
        self.root = self.folder.root
        self.group = group

    @property
    def engine_file(self) -> Path:
        return self.folder.engine_file

    @property
    def done_file(self) -> Path:
        return self.folder.done_file

    def publish_engine(self, kwargs: Mapping[str, Any]) -> None:
        self.run.write_json(self.engine_file, {"kwargs": dict(kwargs), "time": time.time()})

    def announce(self, **extra: Any) -> None:
        """This rank's view (rank, addresses, GPUs): `launcher status` and the tests read it."""
        self.run.write_json(
            self.folder.rank_file(self.group.node_rank),
            {**asdict(self.group), "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra},
        )

    def mark_done(self, state: str) -> None:
        self.run.write_json(self.done_file, {"state": state, "time": time.time()})

    def wait_engine(self, deadline: float) -> dict[str, Any] | None:
        """Rank 0's engine arguments; None when rank 0 ended without starting one (every unit was already done, or
        it failed before: its own failure record and requeue cover that)."""
        while time.time() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):  # not written yet, or being replaced
                found = self.run.read_trusted(self.engine_file)
                if found:
                    return dict(found["kwargs"])
            if self.done():
                return None
            time.sleep(POLL_S)
        raise RankGone(f"rank 0 published no engine arguments in {self.engine_file} before the deadline")

    def done(self) -> bool:
        return self.run.exists(self.done_file)

    def done_state(self) -> str:
        return str(self.run.read_json(self.done_file).get("state"))

    def ranks(self) -> list[dict[str, Any]]:
        return [r for name, r in self.run.json_files(self.root) if self.folder.is_rank_file(name)]


class RankGone(RuntimeError):
    """A peer rank did not come, or left: the step cannot go on."""


def watchdog(deadline: float, ready: threading.Event, what: str) -> threading.Thread:
    """Rank 0's engine start waits for its peers inside vLLM, with no limit of ours: past the deadline, exit
    non-zero (srun then ends the step, and the teardown requeues the job)."""

    def watch() -> None:
        while not ready.wait(POLL_S):
            if time.time() > deadline:
                log.error("multi-node: %s not ready before the deadline (job time limit): ending the step", what)
                os._exit(3)

    thread = threading.Thread(target=watch, name="multinode-watchdog", daemon=True)
    thread.start()
    return thread


def serve_headless(run_dir: Path, group: NodeGroup) -> int:
    """A rank > 0: vLLM's workers for this node's GPUs, joined to rank 0's engine, until rank 0 is done.

    Runs what `vllm serve MODEL --headless --nnodes N --node-rank R` runs (entrypoints/cli/serve.py
    run_headless), from Python: the same process can then watch rank 0's done mark, and an image needs no CLI."""
    rdv = Rendezvous(run_dir, group)
    deadline = ready_deadline()
    rdv.announce(role="headless")
    kwargs = rdv.wait_engine(deadline)
    if kwargs is None:
        log.info("multi-node: rank 0 ended without starting an engine; node %d leaves", group.node_rank)
        return 0
    kwargs.update(group.engine_kwargs())
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from launcher.plan.layout import allocated_gpus

    group.apply_env(cpu=allocated_gpus().count == 0)
    config = EngineArgs(**kwargs).create_engine_config(usage_context=UsageContext.LLM_CLASS, headless=True)
    ready = threading.Event()
    watchdog(deadline, ready, f"node {group.node_rank}'s workers")
    executor = MultiprocExecutor(config, monitor_workers=False)
    ready.set()
    log.info("multi-node: node %d of %d serves rank 0 at %s", group.node_rank, group.nnodes, group.master_addr)
    exited = threading.Event()

    def monitor() -> None:
        executor.start_worker_monitor(inline=True)  # returns when one of this node's workers exits
        exited.set()

    threading.Thread(target=monitor, name="headless-monitor", daemon=True).start()
    while not exited.wait(POLL_S):
        if rdv.done():
            state = rdv.done_state()
            log.info("multi-node: rank 0 is done (%s); node %d leaves", state, group.node_rank)
            with contextlib.suppress(Exception):
                executor.shutdown()
            return 0
    # A local worker died (rank 0 gone, or this node's GPU): non-zero, so srun ends the whole step.
    log.error("multi-node: a worker of node %d exited before rank 0 was done", group.node_rank)
    return 1


__all__ = [
    "NodeGroup",
    "RankGone",
    "Rendezvous",
    "interface_of",
    "master_port",
    "parse_slurm_duration",
    "ready_deadline",
    "route_address",
    "serve_headless",
]
