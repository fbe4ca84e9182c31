"""replica.py: `python -m launcher.replica RUN_DIR TASK REPLICA REPLICAS OUT.json`, one data-parallel engine."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .outputs import write_json_atomic
from .runner import TaskContext, run_replica


def main(argv: list[str]) -> int:
    run_dir, index, replica, replicas, out = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ctx = TaskContext.open(Path(run_dir), int(index))
    info = run_replica(ctx, int(replica), int(replicas))
    write_json_atomic(Path(out), info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
