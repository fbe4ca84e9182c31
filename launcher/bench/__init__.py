"""bench/__init__.py: `launcher bench`, the benchmark harness, inside the package so that an installed launcher can
bench itself on the machine it will run on.

cli.py (the dispatcher) + options.py (flags, which systems) -> one module per system family, each a list of steps
(steps.py: skip, budget, record): baseline_systems.py (raw, hf, sweep), toolkit_systems.py (toolkit, fp8, layouts),
cells_systems.py (the many-cell sweeps, start-up, weights, model swaps), scale_cli.py (scale.py, its shape in
scale_shape.py), prefix_order.py -> runners.py (one system in its own process -> a measurement) + cells.py (the
many-cell sweep) -> report.py (ratios, targets, table) and report_plots.py (the plot), which find measurements one way
(measurements.py). workload.py makes the model config, tokenizer and data; raw_vllm.py and hf_baseline.py are the
baselines' own processes; startup_log.py reads vLLM's start-up lines.
"""

from launcher.bench.cli import add_parser, configure, run

__all__ = ["add_parser", "configure", "run"]
