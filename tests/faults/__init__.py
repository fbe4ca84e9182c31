"""The seeded fault campaign against the live local Slurm (issue 6): `python -m tests.faults.campaign --help`."""
