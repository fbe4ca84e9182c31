"""One parser for GPU lists (slurm_env.parse_gpu_ids): the job's layout (plan/layout.py) and the container shim
(containers/shim.py) read Slurm's compressed ranges, UUIDs and "no GPU" words alike, so they count the same GPUs."""

from __future__ import annotations

import pytest

from launcher.containers.shim import allocated_gpus as shim_gpus
from launcher.plan.layout import allocated_gpus as layout_gpus
from launcher.slurm_env import parse_gpu_ids

UUID_A = "GPU-5f2a9c1e-7d3b-4b1a-9e2f-0c1d2e3f4a5b"
UUID_B = "GPU-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
MIG = "MIG-GPU-5f2a9c1e-7d3b-4b1a-9e2f-0c1d2e3f4a5b/1/0"

CASES = [
    ("0-3", ("0", "1", "2", "3")),
    ("0,2-3", ("0", "2", "3")),
    ("4-5,7", ("4", "5", "7")),
    (" 1 , 3 ", ("1", "3")),
    (f"{UUID_A},{UUID_B}", (UUID_A, UUID_B)),  # a UUID's dashes are not a range
    (MIG, (MIG,)),
    ("", ()),
    ("-1", ()),
    ("NoDevFiles", ()),
    ("0,,1", ("0", "1")),
    ("3-1", ("3-1",)),  # not a range Slurm writes: kept as written, never silently dropped
    ("0-99999999", ("0-99999999",)),  # wider than any node: not expanded into 10^8 ids
]


@pytest.mark.parametrize(("text", "ids"), CASES)
def test_parse_gpu_ids(text: str, ids: tuple[str, ...]) -> None:
    assert parse_gpu_ids(text) == ids


@pytest.mark.parametrize(("text", "ids"), CASES)
def test_layout_and_shim_count_the_same_gpus(text: str, ids: tuple[str, ...]) -> None:
    """SLURM_JOB_GPUS alone: the shim hands the node's ids to the runtime, the job numbers them from 0 as CUDA will."""
    env = {"SLURM_JOB_GPUS": text}
    assert shim_gpus(env).ids == ids
    assert layout_gpus(env).ids == tuple(str(i) for i in range(len(ids)))
    assert layout_gpus(env).count == len(shim_gpus(env).ids)


@pytest.mark.parametrize(("text", "ids"), CASES)
def test_cuda_visible_devices_ranges(text: str, ids: tuple[str, ...]) -> None:
    """CUDA_VISIBLE_DEVICES is taken as written (CUDA numbers from it), ranges expanded: "0-3" is four GPUs, not one
    GPU named "0-3" (what layout.py counted before it shared the shim's parser)."""
    assert layout_gpus({"CUDA_VISIBLE_DEVICES": text}).ids == ids
    assert layout_gpus({"CUDA_VISIBLE_DEVICES": text}).source == "CUDA_VISIBLE_DEVICES"
