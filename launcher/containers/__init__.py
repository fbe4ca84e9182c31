"""containers/__init__.py: the runtimes (apptainer, singularity, docker, podman) as plug-ins, and how a job enters one,
so that a run's image is chosen in the spec and every runtime is driven the same way.

runtimes.py (a request -> the runtime's argv, a registry), shim.py (on the compute node: the job's GPUs -> exec into
the image; at submit: the request written to the run directory), doctor.py (driver, runtime and image checks).
"""

from launcher.containers.runtimes import RUNTIMES, Bind, ContainerRequest, get_runtime

__all__ = ["RUNTIMES", "Bind", "ContainerRequest", "get_runtime"]
