"""nvml_check.py: the worker's GPU sampler (launcher/job/gpu_monitor.py) against a real GPU, under a known load.

Runs a busy phase (back-to-back bf16 matmuls) and an idle phase, sampling once a second as a worker does, and
writes what it measured: the busy phase must read near 100 % SM utilization and the idle one near 0 %, and peak
memory must cover what torch allocated. Usage (GPU host): python benchmarks/nvml_check.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from launcher.gather.throughput import merge_histograms  # pydantic: run it after .gpu2/install-vllm.sh
from launcher.job.gpu_monitor import GpuSampler


def phase(busy: bool, seconds: float) -> dict[str, object]:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    sampler = GpuSampler([gpu], interval_s=1.0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    sampler.start()
    end = time.time() + seconds
    while time.time() < end:
        if busy:
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()
        else:
            time.sleep(0.1)
    sampler.stop()
    fig = sampler.figures() or {}
    mean, p10 = merge_histograms([fig["util_hist"]]) if fig.get("samples") else (None, None)
    return {
        "busy": busy,
        "seconds": seconds,
        "samples": fig.get("samples"),
        "util_mean_pct": mean,
        "util_p10_pct": p10,
        "memory_used_peak_mib": fig.get("memory_used_peak_mib"),
        "torch_reserved_mib": torch.cuda.memory_reserved() // 2**20,
        "power_mean_w": fig.get("power_mean_w"),
        "devices": fig.get("devices"),
        "error": fig.get("error"),
    }


def main() -> int:
    results = {"gpu": torch.cuda.get_device_name(0), "phases": [phase(True, 8.0), phase(False, 5.0)]}
    busy, idle = results["phases"]
    results["ok"] = bool(
        busy["util_mean_pct"] and busy["util_mean_pct"] >= 80 and idle["util_mean_pct"] is not None
        and idle["util_mean_pct"] <= 20 and busy["memory_used_peak_mib"] >= busy["torch_reserved_mib"]
    )  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text + "\n")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
