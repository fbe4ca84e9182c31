"""benchmarks: the harness behind `launcher bench` (workload, baselines, log parsing, report) and its results."""
