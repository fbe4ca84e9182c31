"""GPU figures (utilization, memory, power, GPU-hours, cost) and plan-time estimates.

There is no GPU on the CI machine, so the run-level test drives the real worker, gather and summary with
FakeNvml (launcher.job.gpu_monitor, selected by LAUNCHER_FAKE_NVML): the only fake here, named as one. NVML's
absence is exercised for real (this machine has no driver library).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from launcher.gather.throughput import describe_gpus, merge_histograms, summarize_gpu_samples
from launcher.job.gpu_monitor import FAKE_ENV, GpuSampler, load_nvml
from launcher.plan import expand
from launcher.plan.estimate import HISTORY_ENV, estimate, shape_key
from launcher.spec import load_spec

from .conftest import launcher, make_spec

FAKE_GPU = {"name": "FAKE H100 (test)", "memory_total_mib": 81559, "util": [70], "memory_used_mib": [40960, 61440]}


def _fake_nvml(tmp_path: Path, table: dict[str, Any]) -> Path:
    path = tmp_path / "fake-nvml.json"
    path.write_text(json.dumps(table))
    return path


def _nvml_here() -> bool:
    try:
        load_nvml()
    except RuntimeError:
        return False
    return True


def test_merge_histograms_mean_and_p10() -> None:
    a, b = [0] * 101, [0] * 101
    a[90] = 8  # 8 GPU-seconds at 90%
    b[10] = 1  # a slow start on another worker
    b[100] = 1
    mean, p10 = merge_histograms([a, b])
    assert mean == pytest.approx((8 * 90 + 10 + 100) / 10, abs=0.05)
    assert p10 == 10.0  # the lowest tenth of ten samples is the 10% one
    assert merge_histograms([]) == (None, None)
    assert merge_histograms([[0] * 101]) == (None, None)


def test_sampler_reads_every_gpu_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "0": {
            "name": "fake A",
            "memory_total_mib": 1000,
            "util": [100, 50],
            "memory_used_mib": [100, 900],
            "power_w": [200],
        },
        "GPU-abc": {"name": "fake B", "memory_total_mib": 2000, "util": [0], "memory_used_mib": [10], "power_w": [100]},
    }
    monkeypatch.setenv(FAKE_ENV, str(_fake_nvml(tmp_path, table)))
    sampler = GpuSampler(["0", "GPU-abc"], interval_s=0.01)
    sampler.start()
    deadline = time.time() + 10
    while sampler.samples < 6 and time.time() < deadline:
        time.sleep(0.01)
    sampler.stop()
    fig = sampler.figures()
    assert fig is not None and fig["error"] is None and fig["source"] == "fake-nvml"
    assert [d["name"] for d in fig["devices"]] == ["fake A", "fake B"]
    hist = fig["util_hist"]
    assert sum(hist) == 2 * fig["samples"]  # one reading per GPU per instant
    assert hist[0] == fig["samples"] and hist[100] + hist[50] == fig["samples"]
    assert fig["memory_used_peak_mib"] == 900 and fig["memory_total_mib"] == 2000
    assert fig["power_mean_w"] == 150.0
    run = summarize_gpu_samples([fig])
    assert run["gpu_util_p10_pct"] == 0.0 and run["gpu_memory_peak_gib"] == round(900 / 1024, 2)


def test_sampler_unknown_gpu_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_ENV, str(_fake_nvml(tmp_path, {"0": FAKE_GPU})))
    sampler = GpuSampler(["3"])
    sampler.start()
    sampler.stop()
    fig = sampler.figures()
    assert fig is not None and fig["samples"] == 0 and "has no GPU '3'" in str(fig["error"])
    cpu = GpuSampler([])
    cpu.start()
    assert cpu.figures() is None


@pytest.mark.skipif(_nvml_here(), reason="this machine has an NVIDIA driver: NVML is present")
def test_nvml_absent_is_said_once_and_the_run_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAKE_ENV, raising=False)
    sampler = GpuSampler(["0"])
    sampler.start()
    sampler.stop()
    fig = sampler.figures()
    assert fig is not None and fig["samples"] == 0 and "NVML did not start" in str(fig["error"])
    run = {"gpu_hours": 0.5, "samples_per_gpu_hour": 100.0, **summarize_gpu_samples([fig])}
    line = describe_gpus(run)
    assert line is not None and "no utilization/memory figures: NVML did not start" in line
    assert "0.5 GPU-hours" in line


def test_a_gpu_run_reports_utilization_memory_gpu_hours_and_cost(
    tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    fake = _fake_nvml(tmp_path, {"0": FAKE_GPU})
    spec = make_spec(tmp_path, tiny_model, users_file, cost={"gpu_hour": 3.0, "currency": "EUR"})
    env = {"CUDA_VISIBLE_DEVICES": "0", FAKE_ENV: str(fake), HISTORY_ENV: str(tmp_path / "history.json")}
    proc = launcher("submit", str(spec), "--executor", "local", "--wait", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell = json.loads((tmp_path / "out" / "users" / "full" / "inference_summary.json").read_text())
    run = cell["run"]
    assert run["gpu_figures_source"] == ["fake-nvml"] and run["gpu_samples"] >= 1
    assert run["gpu_util_mean_pct"] == 70.0 and run["gpu_util_p10_pct"] == 70.0
    assert run["gpu_memory_peak_gib"] == 60.0 and run["gpu_memory_total_gib"] == round(81559 / 1024, 2)
    assert run["gpu_hours"] > 0 and run["samples"] == cell["total_samples"]
    # gpu_hours is rounded to 4 places in the summary (a few seconds here), the rates are not
    assert run["samples_per_gpu_hour"] == pytest.approx(run["samples"] / run["gpu_hours"], rel=0.05)
    assert run["cost_per_1000_samples"] == pytest.approx(3.0 * run["gpu_hours"] / run["samples"] * 1000, rel=0.05)
    assert run["currency"] == "EUR" and 0 < run["gpu_busy_fraction"] <= 1
    assert "GPUs: SM utilization 70% mean, 70% p10; peak memory 60.0 of" in proc.stdout
    assert "EUR per 1,000 samples" in proc.stdout
    status = launcher("status", str(tmp_path / "out"))
    assert status.returncode == 0 and "SM utilization 70% mean" in status.stdout
    # The cost never changes the samples, so it is no part of the run's identity.
    repriced = load_spec(make_spec(tmp_path, tiny_model, users_file, name="t2", cost={"gpu_hour": 9.0}))
    assert repriced.fingerprint() == load_spec(spec).fingerprint()


def test_a_cpu_run_claims_no_gpu_hours(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    """A CPU run says it is one (no GPU count, no GPU-busy figure, a CPU line instead), in the summary, on the
    console and in status; `plan` shows what a local job really has; a pipe gets plain progress lines."""
    spec = make_spec(tmp_path, tiny_model, users_file, data={"limit": 2}, cost={"gpu_hour": 3.0})
    env = {"CUDA_VISIBLE_DEVICES": "", HISTORY_ENV: str(tmp_path / "history.json")}
    plan = launcher("plan", str(spec), env=env)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "no GPU" in plan.stdout and "1 GPU(s), 8 CPUs" not in plan.stdout and "CPU core(s)" in plan.stdout
    assert json.loads(launcher("plan", str(spec), "--json", env=env).stdout)["gpus_per_job"] == 0
    proc = launcher("submit", str(spec), "--executor", "local", "--wait", "--progress-every", "0.5", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "users" / "full" / "inference_summary.json").read_text())
    run = summary["run"]
    assert run["gpu_hours"] == 0 and "gpu_util_mean_pct" not in run and run.get("cost_per_1000_samples") is None
    assert run["gpus"] == 0 and run["device"] == "cpu" and run["gpu_busy_fraction"] is None
    assert [w["gpus"] for w in summary["workers"]] == [[]]
    assert 0 < run["busy_fraction"] <= 1 and run["cpu_cores"] >= 1 and run["cpu_hours"] > 0
    assert run["samples_per_cpu_hour"] == pytest.approx(run["samples"] / run["cpu_hours"], rel=0.05)
    assert "GPUs:" not in proc.stdout and "GPU busy" not in proc.stdout
    assert "CPU run (no GPU): generating" in proc.stdout
    assert re.search(
        r"^CPU: \d+ core\(s\) on 1 host\(s\).*core-hours of CPU time; .* samples/core-hour", proc.stdout, re.M
    )
    # stdout is a pipe here (as in a Slurm log or CI): plain lines with records done/total, never a redrawn bar
    lines = re.findall(r"^\d\d:\d\d:\d\d (\d+)/(\d+) records \(\d+%\)", proc.stdout, re.M)
    assert lines and lines[-1] == ("2", "2") and "━" not in proc.stdout, proc.stdout
    status = launcher("status", str(tmp_path / "out"))
    assert "CPU run (no GPU)" in status.stdout and "GPU busy" not in status.stdout and "\nCPU: " in status.stdout
    # Submitted again, every unit is done: no worker job, and status says so instead of an empty jobs table.
    again = launcher("submit", str(spec), "--executor", "local", "--wait", env=env)
    assert again.returncode == 0 and "0 worker job(s) submitted" in again.stdout, again.stderr[-2000:]
    status = launcher("status", str(tmp_path / "out"))
    assert status.returncode == 0 and "every unit was already done" in status.stdout, status.stdout
    assert "last error" not in status.stdout  # the jobs table's header: no table without a row


def _history(path: Path, shape: str, entries: list[tuple[str, float, float]]) -> None:
    runs = {
        f"r{i}": {"shape": shape, "gpu": gpu, "backend": "vllm", "tokens_per_gpu_s": rate, "startup_s": start}
        for i, (gpu, rate, start) in enumerate(entries)
    }
    path.write_text(json.dumps({"runs": runs}))


def test_plan_estimates_from_the_same_shape_and_gpu_kind(
    tmp_path: Path, tiny_model: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = tmp_path / "history.json"
    monkeypatch.setenv(HISTORY_ENV, str(history))
    spec_path = make_spec(
        tmp_path,
        tiny_model,
        users_file,
        executor="slurm",
        slurm={"gpus_per_node": 2, "jobs": 1, "constraint": "h100"},
        cost={"gpu_hour": 2.0},
    )
    plan = expand(load_spec(spec_path))
    est, why = estimate(plan)
    assert est is None and "no earlier run of this model shape" in why and str(history) in why

    shape = shape_key(plan)
    _history(
        history,
        shape,
        [("NVIDIA H100 80GB HBM3", 1000.0, 60.0), ("NVIDIA H100 80GB HBM3", 3000.0, 40.0)]
        + [("NVIDIA H200", 9000.0, 10.0)] * 3
        + [("cpu", 5.0, 3.0)],
    )
    est, why = estimate(plan)
    assert est is not None and "NVIDIA H100" in est.basis and "H200" not in est.basis.split(";")[0]
    tokens = plan.total_samples * plan.spec.sampling.max_tokens
    assert est.tokens == tokens
    assert est.generation_s == pytest.approx(tokens / (2000.0 * 2))  # the H100 median, 2 GPUs
    assert est.startup_s == pytest.approx(50.0)
    assert est.gpu_hours == pytest.approx((est.generation_s + 50.0) * 2 / 3600)
    assert est.cost == pytest.approx(est.gpu_hours * 2.0)
    assert "constraint" in est.basis

    # Without a constraint: the kind measured most, and the others named.
    unconstrained = expand(
        load_spec(
            make_spec(
                tmp_path, tiny_model, users_file, name="u", executor="slurm", slurm={"gpus_per_node": 1, "jobs": 1}
            )
        )
    )
    est2, _ = estimate(unconstrained)
    assert est2 is not None and "NVIDIA H200" in est2.basis and "also measured: NVIDIA H100" in est2.basis

    # The CLI prints it, with the cost.
    proc = launcher("plan", str(spec_path), env={HISTORY_ENV: str(history)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GPU-hours (~" in proc.stdout and "USD)" in proc.stdout and "median of 2 earlier run(s)" in proc.stdout


def test_plan_never_borrows_a_gpu_rate_for_a_cpu_run(
    tmp_path: Path, tiny_model: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = tmp_path / "history.json"
    monkeypatch.setenv(HISTORY_ENV, str(history))
    plan = expand(load_spec(make_spec(tmp_path, tiny_model, users_file, slurm={"gpus_per_node": 0})))
    _history(history, shape_key(plan), [("NVIDIA H100 80GB HBM3", 1000.0, 60.0)])
    est, why = estimate(plan)
    assert est is None and "on CPU" in why
    # After one real CPU run, the next plan has an estimate (the history is written at gather).
    env = {HISTORY_ENV: str(history), "CUDA_VISIBLE_DEVICES": ""}
    proc = launcher("submit", str(tmp_path / "t.yaml"), "--executor", "local", "--wait", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    est, why = estimate(plan)
    assert est is not None and est.gpu_hours == 0 and est.cost is None and "on cpu" in est.basis, why
