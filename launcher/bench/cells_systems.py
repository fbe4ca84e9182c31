"""bench/cells_systems.py: the many-cell systems of `launcher bench` (cells, cells-warm, cells-task-per-cell,
cells-seed-loop; issue 28's startup:*, weights:*, models-swap, models-fresh), as steps in the order their start-up
numbers need, so that the dispatcher (bench/cli.py) only orders the families. The runs are bench/cells.py's and
bench/startup_runs.py's."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from launcher.bench.steps import Step, items

ORDER = ("cells", "cells-warm", "startup", "cells-task-per-cell", "cells-seed-loop", "weights", "models-swap")


def cells_steps(args: argparse.Namespace, systems: set[str], preset: Any, wd: Any, step: Step) -> None:
    from launcher.bench.cells import (
        CellsShape,
        run_cells_seed_loop,
        run_cells_task_per_cell,
        run_cells_toolkit,
        write_cells,
    )
    from launcher.bench.startup_runs import run_models_fresh, run_models_swap, run_startup_variant, run_weights

    wanted = [s for s in (*ORDER, "models-fresh") if s in systems]
    if not wanted:
        return
    shape = CellsShape.parse(args.cells, args.prompt_tokens)
    folder = write_cells(shape, preset, wd.assets)
    measure = min(shape.cells, args.cells_measure or shape.cells)
    t = args.timeout_s
    if "cells" in wanted:
        step(f"cells@{shape.name}", lambda: [run_cells_toolkit(wd, shape, folder, t)])
    if "cells-warm" in wanted:
        step(f"cells-warm@{shape.name}", lambda: [run_cells_toolkit(wd, shape, folder, t, warm=True)])
    for off in items(args.startup_off) if "startup" in wanted else []:
        step(f"startup:{off}@{shape.name}", partial(lambda o: [run_startup_variant(wd, shape, preset, o, t)], off))
    if "cells-task-per-cell" in wanted:
        step(f"cells-task-per-cell@{shape.name}", lambda: [run_cells_task_per_cell(wd, shape, folder, t, measure)])
    if "cells-seed-loop" in wanted:
        step(f"cells-seed-loop@{shape.name}", lambda: [run_cells_seed_loop(wd, shape, folder, t, measure)])
    for loader in items(args.loaders) if "weights" in wanted else []:
        step(f"weights:{loader}@{shape.name}", partial(lambda x: [run_weights(wd, shape, x, t)], loader))
    if "models-swap" in wanted:
        full = args.swap_checkpoint == "full"
        step(f"models-swap@{shape.name}", lambda: [run_models_swap(wd, shape, preset, t, full)])
    if "models-fresh" in wanted:
        step(f"models-fresh@{shape.name}", lambda: [run_models_fresh(wd, shape, preset, t)])
