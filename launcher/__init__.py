"""launcher: batch LLM generation on Slurm clusters, from one YAML job spec to verified samples on shared storage."""

__version__ = "0.1.0"
