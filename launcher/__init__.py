"""__init__.py: batch LLM generation on Slurm clusters, from one YAML job spec to verified samples on shared storage.
The package's root: its version, read by provenance records and the run's compatibility checks."""

__version__ = "0.1.0"
