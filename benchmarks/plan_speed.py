"""plan_speed.py: how long `launcher plan` takes for a run of 100,000 units (target: under 2 s).

Run: .venv/bin/python -m benchmarks.plan_speed [--units 100000] -> benchmarks/results/plan_speed.json

Two numbers, best of 3 and worst: expand() from Python (spec loaded, inputs checked: what cutting the units
costs), and the `launcher plan SPEC` command end to end (interpreter start, spec validation, input checks, plan,
the table it prints), with its CPU time. The machine is shared: the load average is recorded beside them (at a load
of 9 on 2 cores, wall clock is ~4x the CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from launcher.plan import check_inputs, expand
from launcher.spec import load_spec

RESULTS = Path(__file__).resolve().parent / "results" / "plan_speed.json"
TARGET_S = 2.0
ABLATIONS = ["context_only", "profile_only", "history_only", "full"]


def write_inputs(root: Path, units: int) -> Path:
    from launcher.demo_model import make_demo_model

    model = make_demo_model(root / "model")
    rows = units // len(ABLATIONS)
    (root / "d.jsonl").write_text(
        "".join(json.dumps({"user_id": f"u{i}", "context": "c", "profile": {"a": 1}}) + "\n" for i in range(rows))
    )
    spec = {
        "name": "speed",
        "model": {"path": str(model), "backend": "hf"},
        "data": {
            "datasets": [{"name": "d", "path": "d.jsonl"}],
            "ablation_configs": ABLATIONS,
            "records_per_shard": 1,
        },
        "output": {"dir": "out"},
        "executor": "local",
    }
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--units", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec_path = write_inputs(root, args.units)
        api, cli, cli_cpu = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            spec = load_spec(spec_path)
            plan = expand(spec, check_inputs(spec))
            api.append(time.perf_counter() - t0)
            assert len(plan.units) == args.units, len(plan.units)
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "launcher", "plan", str(spec_path)],
                stdout=subprocess.DEVNULL,
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            )
            _, status, usage = os.wait4(proc.pid, 0)
            cli.append(time.perf_counter() - t0)
            cli_cpu.append(usage.ru_utime + usage.ru_stime)
            assert os.waitstatus_to_exitcode(status) == 0
    result = {
        "benchmark": "plan_speed",
        "units": args.units,
        "target_s": TARGET_S,
        "expand_s_best": round(min(api), 3),
        "expand_s_worst": round(max(api), 3),
        "launcher_plan_cli_s_best": round(min(cli), 3),
        "launcher_plan_cli_s_worst": round(max(cli), 3),
        "launcher_plan_cli_cpu_s_best": round(min(cli_cpu), 3),
        "load_avg_1min": os.getloadavg()[0],
        "machine": f"{platform.node()} {platform.machine()} ({os.cpu_count()} cores, shared), python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "ok": min(cli) < TARGET_S,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
