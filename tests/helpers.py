"""Shared helpers of the tests that drive the live local Slurm (tests/test_slurm_live.py, tests/faults/): waiting,
Slurm's view of a job, `launcher submit`, and what a run directory holds (units, jobs, workers).

Real parts only: these read the run directory the launcher wrote and ask the real sacct/squeue/scontrol.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import launcher

# Slurm states after which a job never runs again (scontrol; sacct shows REQUEUED/PREEMPTED for earlier attempts)
FINAL_JOB_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class Stopped(RuntimeError):
    """A wait was abandoned because its caller was told to stop (the test module or the campaign ends)."""


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    every_s: float = 0.5,
    stop: threading.Event | None = None,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something true, and return that. TimeoutError (with `explain()` appended)
    after `timeout_s`; Stopped as soon as `stop` is set."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped while waiting for {what}")
        value = check()
        if value:
            return value
        time.sleep(every_s)
    detail = explain() if explain is not None else ""
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s" + (f"\n{detail}" if detail else ""))


# ---------------------------------------------------------------- Slurm


def _run(cmd: list[str], timeout_s: float = 30) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def job_state(job_id: str) -> str | None:
    """scontrol's state of a job (kept MinJobAge=600 s after it ends), None if unknown."""
    for word in _run(["scontrol", "show", "job", "-o", job_id]).split():
        if word.startswith("JobState="):
            return word.removeprefix("JobState=")
    return None


def sacct_states(job_id: str) -> list[str]:
    """Every record of a job or array, requeued attempts included (-D), oldest first."""
    out = _run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "State"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def in_queue(job_id: str) -> bool:
    """Slurm still holds the job (or an element of the array): pending, running, completing."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return True
    return bool(out.stdout.strip())


# ---------------------------------------------------------------- the launcher


def submit(spec: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`launcher submit SPEC` in a fresh process: the run dir it printed, and the process. RuntimeError if it failed."""
    proc = launcher("submit", str(spec), *extra, env=env)
    match = re.search(r"run dir: (\S+)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"launcher submit {spec} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return Path(match.group(1)), proc


def run_json(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def submissions(run_dir: Path) -> list[dict[str, Any]]:
    subs: list[dict[str, Any]] = run_json(run_dir)["submissions"]
    return subs


def job_log(run_dir: Path, job_id: str, stream: str = "out") -> Path:
    """submitit's log of one array element (`<array>_<index>`), appended to across its requeues."""
    return run_dir / "logs" / f"{job_id}_0_log.{stream}"


# ---------------------------------------------------------------- the run directory (store/run_dir.py's layout)


def _json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def chunk_files(run_dir: Path, unit_id: str = "*") -> list[Path]:
    """The unit's checked chunk files (a chunk set aside as damaged is renamed `*.jsonl.damaged-<time>`)."""
    return sorted(run_dir.glob(f"units/{unit_id}/chunks/*.jsonl"))


def chunk_rows(run_dir: Path, unit_id: str = "*") -> list[tuple[str, int]]:
    """(dataset, row) of every record in every chunk file (of one unit, or all): what was generated, twice if so."""
    from launcher.store import parse_lines

    out = []
    for path in chunk_files(run_dir, unit_id):
        for row in parse_lines(path.read_bytes(), str(path)):  # split on b"\n" only, as the launcher reads them
            out.append((row["dataset"], row["row"]))
    return out


def unit_done(run_dir: Path, unit_id: str) -> dict[str, Any]:
    """The unit's done.json ({} while it is not done): chunks, worker, claim generation, finished_at."""
    return _json(run_dir / "units" / unit_id / "done.json")


def claim_owner(run_dir: Path, unit_id: str, generation: int | None = None) -> dict[str, Any]:
    """The owner of a unit's claim (store/claims.py: worker slot, host, pid, Slurm job id, restart), with its
    `generation` and whether it was `released`: the newest claim, or the generation asked for. {} if none."""
    folder = run_dir / "units" / unit_id / "claims"
    if generation is None:
        gens = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()) if folder.is_dir() else []
        if not gens:
            return {}
        generation = gens[-1]
    owner = _json(folder / f"{generation:06d}.json")
    released = (folder / f"{generation:06d}.released").exists()
    return {**owner, "generation": generation, "released": released} if owner else {}


def unit_failures(run_dir: Path, unit_id: str) -> list[dict[str, Any]]:
    from launcher.store import UnitDir

    return [f.to_json() for f in UnitDir(run_dir / "units" / unit_id).read_failures()]  # as the files hold them


def job_dir(run_dir: Path, index: int) -> Path:
    return run_dir / "jobs" / str(index)


def job_failures(run_dir: Path, index: int) -> list[dict[str, Any]]:
    from launcher.job.retries import read_failures

    return [f.to_json() for f in read_failures(job_dir(run_dir, index))]


def requeue_markers(run_dir: Path, index: int) -> list[dict[str, Any]]:
    folder = job_dir(run_dir, index) / "requeues"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def live(run_dir: Path, index: int) -> dict[str, Any]:
    """jobs/<index>/live.json: the job's current process (pid, host, Slurm job id, restart)."""
    return _json(job_dir(run_dir, index) / "live.json")


def attempts(run_dir: Path, index: int) -> list[dict[str, Any]]:
    """The job's finished attempts (layout, workers, restart), oldest first."""
    folder = job_dir(run_dir, index) / "attempts"
    return [_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def worker_reports(run_dir: Path) -> list[dict[str, Any]]:
    """Every worker process's last report (workers/<slot>-r<restart>-<pid>.json), oldest first."""
    from launcher.store import RunDir

    return RunDir(run_dir).worker_reports()


def records_by(report: dict[str, Any], unit_id: str, num_samples: int) -> int:
    """Records a worker process generated for one unit (its unit window counts samples)."""
    window = (report.get("unit_windows") or {}).get(unit_id)
    return int(window[2]) // num_samples if window else 0


__all__ = [
    "FINAL_JOB_STATES",
    "Stopped",
    "attempts",
    "chunk_files",
    "chunk_rows",
    "claim_owner",
    "in_queue",
    "job_dir",
    "job_failures",
    "job_log",
    "job_state",
    "launcher",
    "live",
    "records_by",
    "requeue_markers",
    "run_json",
    "sacct_states",
    "submissions",
    "submit",
    "unit_done",
    "unit_failures",
    "wait_for",
    "worker_reports",
]


# Why a multi-node test skips: slurm/up.sh adds the second node only where network namespaces are allowed.
NO_SECOND_NODE = (
    "no second Slurm node: run slurm/up.sh of this version as root, on a machine that allows network namespaces "
    "(LAUNCHER_SLURM_SECOND_NODE=1 makes up.sh fail where it cannot)"
)
