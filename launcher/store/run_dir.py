"""store/run_dir.py: the run directory's paths, computed in one place. Nothing else spells them.

<output.dir>/runs/<run id>/
    spec.json  plan.json       what every job reads (written at submit; the run id is read from here, never
                               recomputed: a touched input mid-run must not move a job's outputs)
    run.json                   identity, submissions, image, versions
    inputs.json                what every unit's inputs are checked against, the prompt clock (inputs/guard.py)
    container.json             the container request (0600: it may hold secrets)
    prompt_stats.json          prompt lengths per unit, measured once by one worker (engine admission)
    prompt_stats.claims/       which worker measures them (a claim, as a unit's: the others do not wait)
    units/<unit id>/           chunks, claims, done marker (unit_dir.py)
    units.log                  every unit's claims, done markers, give-backs, reopenings, in order (unit_log.py)
    jobs/<array index>/        live.json, failures/, requeues/, attempts/: one Slurm array element's history
    workers/<slot>-r<restart>-<pid>.json   one worker process: host, GPUs, units, rates, engine settings
    logs/                      submitit's logs
    submit.lock  gather.lock   one submit, one gather at a time
    summary.json               the run's wall-clock figures, written by gather
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.store.atomic import read_json
from launcher.store.records import WorkerReport
from launcher.store.unit_dir import UnitDir
from launcher.store.unit_log import UnitLog, UnitView


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def output_dir(self) -> Path:
        """<output.dir>: the run dir is <output.dir>/runs/<run id>."""
        return self.root.parent.parent

    def final_dir(self, dataset: str, ablation: str) -> Path:
        return self.output_dir / dataset / ablation

    @property
    def spec_json(self) -> Path:
        return self.root / "spec.json"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def inputs_record(self) -> Path:
        return self.root / "inputs.json"

    @property
    def container_json(self) -> Path:
        return self.root / "container.json"

    @property
    def prompt_stats(self) -> Path:
        return self.root / "prompt_stats.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def submit_lock(self) -> Path:
        return self.root / "submit.lock"

    @property
    def interrupted(self) -> Path:
        """Written when the user stopped a local run (Ctrl-C, SIGTERM, `launcher cancel`): status says INTERRUPTED."""
        return self.root / "interrupted.json"

    @property
    def gather_lock(self) -> Path:
        return self.root / "gather.lock"

    @property
    def units(self) -> Path:
        return self.root / "units"

    def unit(self, unit_id: str) -> UnitDir:
        return UnitDir(self.units / unit_id, UnitLog(self.unit_log))

    @property
    def unit_log(self) -> Path:
        return self.root / "units.log"

    def unit_view(self) -> UnitView:
        """What units.log says of every unit, read once (call refresh() on it to read what came since)."""
        view = UnitView(UnitLog(self.unit_log))
        view.refresh()
        return view

    @property
    def prompt_stats_claims(self) -> Path:
        """Who measures the run's prompt statistics (one worker; the others look for prompt_stats.json later)."""
        return self.root / "prompt_stats.claims"

    def job(self, index: int) -> JobDir:
        return JobDir(self.root / "jobs" / str(index))

    @property
    def workers(self) -> Path:
        return self.root / "workers"

    def worker_report(self, slot: str, restart: int, pid: int, model: str = "") -> Path:
        """One per worker process and model (a job of a `models:` sweep runs one engine per model, in turn)."""
        return self.workers / f"{slot}-r{restart}-{pid}{f'-{model}' if model else ''}.json"

    def worker_reports(self) -> list[WorkerReport]:
        """Every worker process's last report, oldest first."""
        try:
            paths = sorted(self.workers.glob("*.json"))
        except OSError:
            return []
        reports = [WorkerReport(**r) for r in (read_json(p) for p in paths) if r]  # type: ignore[typeddict-item]
        return sorted(reports, key=lambda r: r.get("started") or 0.0)

    def read_run(self) -> dict[str, Any]:
        return read_json(self.run_json)

    def is_run(self) -> bool:
        return self.plan_json.exists() and self.spec_json.exists()

    @classmethod
    def of(cls, output_dir: str | Path, run_id: str) -> RunDir:
        return cls(Path(output_dir) / "runs" / run_id)


@dataclass(frozen=True)
class JobDir:
    """One Slurm array element (or local job) across its requeues."""

    root: Path

    @property
    def index(self) -> int:
        return int(self.root.name)

    @property
    def live(self) -> Path:
        return self.root / "live.json"

    @property
    def failures(self) -> Path:
        return self.root / "failures"

    @property
    def requeues(self) -> Path:
        return self.root / "requeues"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def attempt_files(self) -> list[Path]:
        return sorted(self.attempts.glob("*.json")) if self.attempts.is_dir() else []

    def read_attempts(self) -> list[dict[str, Any]]:
        return [a for a in (read_json(p) for p in self.attempt_files()) if a]


__all__ = ["JobDir", "RunDir"]
