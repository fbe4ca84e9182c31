"""submit_speed.py: how long `launcher submit` takes for a 1,000-task array on the live local Slurm.

    .venv/bin/python benchmarks/submit_speed.py [--tasks 1000] [--repeat 3]

Two numbers per repeat: `submit()` called from Python (plan already expanded: what the array costs), and the
`launcher submit SPEC` command end to end (interpreter start, spec validation, plan, submit, run.json). The arrays
are submitted held (`--hold`), so nothing runs, and are cancelled at once.
Results: benchmarks/results/submit_speed.json.
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

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "submit_speed.json"
TARGET_S = 5.0


def make_inputs(folder: Path, model: Path, tasks: int) -> Path:
    """A spec whose plan has `tasks` tasks (one record each), on the tiny demo model (the held tasks never run)."""
    folder.mkdir(parents=True)
    data = folder / "users.jsonl"
    data.write_text("".join(json.dumps({"user_id": f"u{i:05d}", "context": f"item {i}"}) + "\n" for i in range(tasks)))
    spec = {
        "extends": str(ROOT / "configs" / "slurm-local.yaml"),
        "name": "submit-speed",
        "model": {"path": str(model)},
        "data": {
            "datasets": [{"name": "users", "path": str(data)}],
            "ablation_configs": ["context_only"],
            "records_per_shard": 1,
            "num_samples": 1,
        },
        "slurm": {"gpus_per_node": 0, "extra_args": {"hold": True}, "gather": True},
        "output": {"dir": str(folder / "out")},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cancel(run_dir: Path) -> None:
    run = json.loads((run_dir / "run.json").read_text())
    ids = {s["array_job_id"] for s in run["submissions"] if s.get("array_job_id")}
    ids |= {s["gather_job_id"] for s in run["submissions"] if s.get("gather_job_id")}
    subprocess.run(["scancel", *sorted(ids)], check=False)


def once(tasks: int, model: Path) -> dict[str, float]:
    from launcher.plan import expand
    from launcher.spec import load_spec
    from launcher.submit.executors import submit

    with tempfile.TemporaryDirectory(prefix="submit-speed-") as tmp:
        spec_path = make_inputs(Path(tmp) / "api", model, tasks)
        plan = expand(load_spec(spec_path))
        t0 = time.perf_counter()
        sub = submit(plan)
        api_s = time.perf_counter() - t0
        assert len(sub.job_ids) == tasks, len(sub.job_ids)
        cancel(sub.run_dir)

        spec_path = make_inputs(Path(tmp) / "cli", model, tasks)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "launcher", "submit", str(spec_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ),
        )
        cli_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"launcher submit failed:\n{proc.stdout}\n{proc.stderr}")
        run_dir = next((Path(tmp) / "cli" / "out" / "runs").iterdir())
        cancel(run_dir)
        assert len(json.loads((run_dir / "run.json").read_text())["submissions"][0]["job_ids"]) == tasks
    return {"submit_api_s": round(api_s, 3), "launcher_submit_cli_s": round(cli_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/submit_speed.json alone")
    args = ap.parse_args()
    from launcher.demo_model import make_demo_model

    with tempfile.TemporaryDirectory(prefix="submit-speed-model-") as tmp:
        model = make_demo_model(Path(tmp) / "model")
        runs = [once(args.tasks, model) for _ in range(args.repeat)]
    result = {
        "benchmark": "submit_speed",
        "tasks": args.tasks,
        "target_s": TARGET_S,
        "runs": runs,
        "best_api_s": min(r["submit_api_s"] for r in runs),
        "best_cli_s": min(r["launcher_submit_cli_s"] for r in runs),
        "worst_cli_s": max(r["launcher_submit_cli_s"] for r in runs),
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip(),
            "cluster": "local test Slurm from slurm/up.sh (one node, slurmdbd)",
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result["ok"] = result["worst_cli_s"] < TARGET_S
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
