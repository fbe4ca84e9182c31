"""bench: `launcher bench`, the benchmark harness, inside the package so an installed launcher can bench.

cli.py (options, which systems) -> runners.py (one system in its own process -> a measurement) + cells.py (the
many-cell sweep) -> report.py (ratios, targets, table, plot). workload.py makes the model config, tokenizer and data;
raw_vllm.py and hf_baseline.py are the baselines' own processes; startup_log.py reads vLLM's start-up lines.
"""

from launcher.bench.cli import add_parser, configure, run

__all__ = ["add_parser", "configure", "run"]
