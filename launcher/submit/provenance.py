"""submit/provenance.py: a submission -> run.json: what ran, from which spec (secrets redacted), launcher version and
git sha, image digest, inputs' identity and their changes, every submission's jobs. Read by status, gather and a
later reproduce."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher import __version__
from launcher.plan import Plan
from launcher.plan.persist import ResolvedRun
from launcher.secrets import REDACTED, is_secret_name
from launcher.spec import JobSpec
from launcher.store import RunRecord, Submission, sha256_file


def write_run_json(
    plan: Plan,
    job_ids: list[str],
    gather_id: str | None,
    executor: str,
    jobs: int,
    units_todo: int,
    resolved: ResolvedRun | None = None,
    resume_with: str | None = None,
) -> None:
    """resume_with: the command that goes on with this run (its hints name it: plan/persist.resume_hint)."""
    spec = plan.spec
    previous = plan.run.read_run()
    inputs = resolved.inputs.as_json() if resolved else previous.inputs
    input_changes = list(previous.input_changes)
    if resolved and resolved.changes:  # --resume with changed inputs: the run says so, forever
        input_changes = [
            *input_changes,
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "changes": resolved.changes,
                "from_digest": previous.inputs_digest,
                "to_digest": resolved.inputs.digest,
            },
        ]
    submission = Submission.new(
        submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        submitted_epoch=time.time(),
        executor=executor,
        job_ids=job_ids,
        array_job_id=job_ids[0].split("_")[0] if job_ids else None,
        array_job_ids=sorted({j.split("_")[0] for j in job_ids}, key=lambda j: int(j) if j.isdigit() else 0),
        gather_job_id=gather_id,
        jobs=jobs,
        job_indices=list(range(jobs)),
        units_todo=units_todo,
        submission=os.environ.get("LAUNCHER_SUBMISSION"),
        user=getpass.getuser(),
        host=os.uname().nodename,
    )
    record = RunRecord.new(
        run_id=plan.run.run_id,
        name=spec.name,
        spec=redact(spec.model_dump(mode="json")),
        fingerprint=spec.fingerprint(),
        units=len(plan.units),
        records=plan.total_records,
        jobs=plan.jobs,
        jobs_reason=plan.jobs_reason,
        inputs=inputs,
        input_changes=input_changes,
        launcher_version=__version__,
        git_sha=(sha := git_sha()),
        git_dirty=git_dirty() if sha else None,
        python=sys.version.split()[0],
        image=image_record(spec),
        submissions=[*(s.to_json() for s in previous.submissions), submission.to_json()],
        resume_with=resume_with or previous.resume_with,
    )
    plan.run.write_json(plan.run.run_json, record.to_json())


def redact(obj: Any) -> Any:
    """Values of env-like keys that look secret never reach run.json."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_name(str(k)) and isinstance(v, str) else redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def git_sha() -> str | None:
    """The launcher's own commit when it runs from a checkout (a slow or hung git costs a submit at most
    $LAUNCHER_GIT_TIMEOUT_S, 5 s by default, while it holds the run's submit lock)."""
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def git_dirty() -> bool | None:
    """Whether the launcher package itself has uncommitted changes in its checkout (None: not a checkout). A dirty
    checkout's commit does not name the code that ran: run.json says so, and `launcher reproduce` warns."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", str(Path(__file__).parents[1]))
    return bool(out.strip()) if out is not None else None


def _git(*args: str) -> str | None:
    """git's output, run from the launcher's folder; None when git is missing, hangs, or this is no checkout."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=float(os.environ.get("LAUNCHER_GIT_TIMEOUT_S") or 5),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


INSPECT_TIMEOUTS_S = (30, 90)


def image_record(spec: JobSpec) -> dict[str, Any]:
    c = spec.container
    if c.runtime == "none" or not c.image:
        return {"runtime": "none", "python": sys.executable}
    record: dict[str, Any] = {"runtime": c.runtime, "image": c.image}
    path = Path(c.image)
    if c.runtime in {"apptainer", "singularity"} and path.is_file():
        record["sha256"] = sha256_file(path)
    elif c.runtime in {"docker", "podman"}:
        # Rootless podman waits on its storage lock while another podman of the same user works (measured: > 30 s
        # under a loaded CI host): one longer try after a timeout, before run.json goes without the image id.
        for timeout in INSPECT_TIMEOUTS_S:
            record.pop("id_error", None)
            try:
                out = subprocess.run(
                    [c.runtime, "image", "inspect", "--format", "{{.Id}}", c.image],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as exc:
                record["id_error"] = f"TimeoutExpired: {exc}"[:300]
                continue
            except (OSError, subprocess.SubprocessError) as exc:
                record["id_error"] = f"{type(exc).__name__}: {exc}"[:300]
                break
            if out.returncode == 0:
                record["id"] = out.stdout.strip()
            else:
                record["id_error"] = (out.stderr.strip().splitlines() or ["no output"])[-1][:300]
            break
        if "id_error" in record:  # run.json then cannot say which image ran: say so where the user looks
            print(
                f"warning: `{c.runtime} image inspect {c.image}` failed ({record['id_error']}); run.json will not "
                "record the image id",
                file=sys.stderr,
            )
    return record
