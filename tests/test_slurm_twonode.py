"""Against the live local Slurm's second node (slurm/up.sh): a `--nodes=2` job runs one srun step over two real
slurmds, the host's and one in its own network namespace (partition `multi`).

Nothing is mocked: real sbatch/srun, a real torch.distributed gloo rendezvous over the veth pair between the two
nodes, and a real SIGKILL of one rank. About 15 s in all here (torch's import is most of it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import NO_SECOND_NODE, in_queue, sacct_states, wait_for

pytestmark = pytest.mark.slurm

PARTITION = "multi"
START_TIMEOUT_S = 120  # the first node is shared with other tests' jobs: ours may wait for a free CPU/GPU
KILL_BOUND_S = 10  # kill -9 of one rank -> the whole step ended (measured: 0.04 s)

# The batch script: MASTER_ADDR is the first allocated node's NodeAddr (node names of the second node do not resolve
# on the host; NodeAddr is what Slurm itself uses to reach a node). Then one task per node.
HEADER = """#!/bin/bash
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_ADDR=$(scontrol show node "$first" -o | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')
export MASTER_ADDR MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
"""

# Each rank writes what it sees: Slurm's variables, its network namespace and addresses, and gloo's all_reduce sum.
RANK_PY = """
import json, os, socket, subprocess, sys
out = {k: v for k, v in os.environ.items() if k.startswith(("SLURM", "CUDA_", "MASTER_"))}
out["hostname"] = socket.gethostname()
out["addresses"] = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
out["netns"] = os.readlink("/proc/self/ns/net")
if sys.argv[2] == "gloo":
    from datetime import timedelta
    import torch, torch.distributed as dist
    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    dist.init_process_group("gloo", init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=30))
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x)
    out["sum"] = x.item()
    dist.destroy_process_group()
with open(os.path.join(sys.argv[1], f"rank{os.environ['SLURM_PROCID']}.json"), "w") as f:
    json.dump(out, f)
"""


def _multi_nodes() -> list[str]:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(set(out.split()))


@pytest.fixture(scope="module", autouse=True)
def two_nodes() -> list[str]:
    nodes = _multi_nodes()
    if len(nodes) < 2:
        pytest.skip(f"no 2-node partition '{PARTITION}' (nodes: {nodes}): {NO_SECOND_NODE}")
    return nodes


def sbatch(tmp_path: Path, body: str, *args: str) -> str:
    script = tmp_path / "job.sh"
    script.write_text(HEADER + body)
    (tmp_path / "rank.py").write_text(RANK_PY)
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            PARTITION,
            "--nodes=2",
            "--ntasks-per-node=1",
            "-D",
            str(tmp_path),
            "-o",
            str(tmp_path / "job.out"),
            *args,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.strip().split(";")[0]


def wait_done(tmp_path: Path, job_id: str, timeout_s: float = START_TIMEOUT_S) -> None:
    def log() -> str:
        out = tmp_path / "job.out"
        return out.read_text() if out.exists() else "(no job.out)"

    wait_for(f"job {job_id} ends", lambda: not in_queue(job_id), timeout_s, every_s=0.1, explain=log)


def ranks(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_on_two_nodes(tmp_path: Path, two_nodes: list[str]) -> None:
    step = f'srun --kill-on-bad-exit=1 {sys.executable} rank.py "$PWD" env\n'
    job_id = sbatch(tmp_path, step, "--gres=gpu:1")
    wait_done(tmp_path, job_id)
    r0, r1 = ranks(tmp_path)

    assert [r0["SLURM_PROCID"], r1["SLURM_PROCID"]] == ["0", "1"]
    assert [r0["SLURM_NODEID"], r1["SLURM_NODEID"]] == ["0", "1"]
    assert {r0["SLURMD_NODENAME"], r1["SLURMD_NODENAME"]} == set(two_nodes)
    assert r0["SLURM_JOB_NUM_NODES"] == r1["SLURM_JOB_NUM_NODES"] == "2"
    # two hosts in the network's sense: own namespaces, own hostnames, and rank 1's addresses are not rank 0's
    assert r0["netns"] != r1["netns"]
    assert r0["hostname"] != r1["hostname"]
    assert r1["addresses"] and not set(r1["addresses"]) & set(r0["addresses"])
    # rank 0 runs where srun runs (the batch node, the first in the list): the MASTER_ADDR the script derived
    assert r0["MASTER_ADDR"] in r0["addresses"]
    assert r0["SLURM_LAUNCH_NODE_IPADDR"] == r1["SLURM_LAUNCH_NODE_IPADDR"] == r0["MASTER_ADDR"]
    # --gres=gpu:1 is per node: one fake GPU id on each
    assert len(r0["CUDA_VISIBLE_DEVICES"].split(",")) == len(r1["CUDA_VISIBLE_DEVICES"].split(",")) == 1
    wait_for(f"sacct COMPLETED for {job_id}", lambda: sacct_states(job_id) == ["COMPLETED"], 20, every_s=0.2)


def test_gloo_all_reduce_across_nodes(tmp_path: Path) -> None:
    step = f'srun --kill-on-bad-exit=1 {sys.executable} rank.py "$PWD" gloo\n'
    job_id = sbatch(tmp_path, step)
    wait_done(tmp_path, job_id)
    r0, r1 = ranks(tmp_path)
    assert r0["netns"] != r1["netns"]
    assert r0["sum"] == r1["sum"] == 1.0 + 2.0


def test_killed_rank_ends_the_step(tmp_path: Path) -> None:
    # Each task records its pid, then becomes a long sleep; the script exits with srun's status.
    step = (
        "srun --kill-on-bad-exit=1 bash -c 'echo $$ > \"rank$SLURM_PROCID.pid\"; exec sleep 300'\n"
        'rc=$?; echo "srun rc=$rc"; exit $rc\n'
    )
    job_id = sbatch(tmp_path, step)
    pids = [tmp_path / f"rank{r}.pid" for r in range(2)]
    try:
        wait_for(
            f"both ranks of {job_id} run",
            lambda: all(p.exists() and p.read_text().strip() for p in pids),
            START_TIMEOUT_S,
            every_s=0.1,
        )
        pid0, pid1 = (int(p.read_text()) for p in pids)
        assert os.readlink(f"/proc/{pid1}/ns/net") != os.readlink("/proc/self/ns/net")  # rank 1: the second node
        t0 = time.monotonic()
        os.kill(pid1, signal.SIGKILL)
        # --kill-on-bad-exit: srun terminates rank 0 on the other node, and the job ends
        wait_done(tmp_path, job_id, timeout_s=KILL_BOUND_S)
        took = time.monotonic() - t0
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    assert not Path(f"/proc/{pid0}/cmdline").exists() or _zombie(pid0), f"rank 0 (pid {pid0}) still runs"
    assert took < KILL_BOUND_S
    out = (tmp_path / "job.out").read_text()
    assert "task 1: Killed" in out and "srun rc=0" not in out, out
    wait_for(f"sacct FAILED for {job_id}", lambda: sacct_states(job_id) == ["FAILED"], 20, every_s=0.2)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] in {"Z", "X", "x"}
