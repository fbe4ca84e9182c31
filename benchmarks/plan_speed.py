"""plan_speed.py: how long `launcher plan` takes to expand 10,000 tasks (target: under a second).

Run: .venv/bin/python -m benchmarks.plan_speed  -> benchmarks/results/plan_speed.json
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import yaml

from launcher.plan import expand
from launcher.spec import load_spec

RESULTS = Path(__file__).resolve().parent / "results" / "plan_speed.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        (root / "model" / "config.json").write_text(json.dumps({"num_attention_heads": 4, "hidden_size": 128}))
        (root / "model" / "model.safetensors").write_bytes(b"\0")
        (root / "model" / "tokenizer.json").write_text("{}")
        rows = "".join(json.dumps({"user_id": f"u{i}", "context": "c"}) + "\n" for i in range(5000))
        (root / "d.jsonl").write_text(rows)
        spec = {
            "name": "speed",
            "model": {"path": "model", "backend": "hf"},
            "data": {
                "datasets": [{"name": "d", "path": "d.jsonl"}],
                "ablation_configs": ["context_only", "full"],
                "records_per_shard": 1,
            },
            "output": {"dir": "out"},
            "executor": "local",
        }
        (root / "s.yaml").write_text(yaml.safe_dump(spec))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            plan = expand(load_spec(root / "s.yaml"))
            times.append(time.perf_counter() - t0)
        assert len(plan.tasks) == 10_000
    result = {
        "tasks": 10_000,
        "seconds_min": round(min(times), 3),
        "seconds_max": round(max(times), 3),
        "machine": f"{platform.node()} {platform.machine()} (2 cores), python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
