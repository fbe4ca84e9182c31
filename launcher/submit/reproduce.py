"""submit/reproduce.py: `launcher reproduce RUN_DIR` — run a finished run again from its own record, then compare.

What the record pins and what is checked before anything is submitted (each mismatch refused, exit 2, unless the
flag that allows it is given; the reproduction's run.json then says what differed):
- the spec as resolved (spec.json: every field, seeds included; only output.dir changes);
- the inputs' content (run.json "inputs": model files, datasets, preamble) — a different dataset is not a
  reproduction, so no flag allows it;
- the container image (its digest: a .sif's sha256, a Docker/Podman image id) — `--allow-other-image`;
- the launcher (its version and, from a checkout, its git sha) — `--allow-other-launcher`.

What vLLM itself promises (docs.vllm.ai, "Reproducibility"): the same samples only on the same hardware with the
same vLLM version, and only with batch-invariant kernels or one engine process per request order; otherwise
batching changes the floating-point order and greedy outputs can diverge after a few tokens. The CPU path (the
tests) is byte-identical; on GPUs `launcher compare` measures how far two runs agree rather than assuming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher import __version__
from launcher.errors import Problem, Refused
from launcher.inputs.guard import PromptClock, read_record
from launcher.inputs.identity import changes, identify, matches
from launcher.plan import Plan
from launcher.plan.persist import load_plan, runs_of
from launcher.spec import JobSpec
from launcher.store import RunDir, RunRecord, sha256_file
from launcher.submit.provenance import git_dirty, git_sha, image_record

FLAG_IMAGE = "--allow-other-image"
FLAG_LAUNCHER = "--allow-other-launcher"


@dataclass
class ReproductionCheck:
    """The original run, the spec to run again, and what differs from the record (allowed or not)."""

    original: Plan
    record: RunRecord
    spec: JobSpec
    allowed_differences: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.original.run.root),
            "run_id": self.original.run.run_id,
            "launcher_version": self.record.launcher_version,
            "git_sha": self.record.git_sha,
            "image": self.record.image,
            "inputs_digest": self.record.inputs_digest,
            "allowed_differences": self.allowed_differences,
        }


def check_reproducible(
    run_dir: Path, output_dir: Path | None, allow_other_image: bool = False, allow_other_launcher: bool = False
) -> ReproductionCheck:
    original = load_plan(run_dir)
    record = original.run.read_run()
    where = str(original.run.run_json)
    if not record.exists:
        raise Refused.one(
            where, "", "this run has no run.json: it was never submitted, so there is no record to reproduce"
        )
    problems: list[Problem] = []
    allowed: list[str] = []

    raw = original.run.read_trusted(original.run.spec_json)
    target = (output_dir or Path(f"{original.spec.output.dir}-reproduce")).absolute()
    raw["output"]["dir"] = str(target)
    spec = JobSpec.model_validate(raw)
    if record.fingerprint is not None and spec.fingerprint() != record.fingerprint:
        problems.append(
            Problem(
                where,
                "fingerprint",
                "the spec this launcher reads from spec.json hashes differently from the one recorded: this launcher "
                "reads the run's fields differently",
                fix="reproduce with the launcher version that wrote the run (run.json: launcher_version, git_sha)",
            )
        )

    inputs_now = identify(spec)
    recorded_inputs = record.inputs or {}
    if recorded_inputs and not matches(recorded_inputs, inputs_now):
        problems.append(
            Problem(
                where,
                "inputs",
                "the inputs are not what the run read: " + "; ".join(changes(recorded_inputs, inputs_now)),
                fix="restore the original model/dataset files (run.json 'inputs' lists each with its sha256); "
                "with other inputs this is a new run, not a reproduction: `launcher submit SPEC --new-run`",
            )
        )

    image_then, image_now = record.image or {}, image_record(spec)
    if _image_key(image_then) != _image_key(image_now):
        what = f"the image differs: recorded {_image_key(image_then)}, now {_image_key(image_now)}"
        if allow_other_image:
            allowed.append(what)
        else:
            problems.append(
                Problem(
                    where,
                    "image",
                    what,
                    allowed=f"the recorded image, or {FLAG_IMAGE}",
                    fix=f"point container.image at the recorded image, or pass {FLAG_IMAGE} (recorded in the "
                    "reproduction's run.json; vLLM only promises the same samples with the same vLLM version)",
                )
            )

    launcher_then = (record.launcher_version, record.git_sha)
    launcher_now = (__version__, git_sha())
    if launcher_then != launcher_now:
        what = f"the launcher differs: recorded {_launcher(*launcher_then)}, now {_launcher(*launcher_now)}"
        if allow_other_launcher:
            allowed.append(what)
        else:
            sha = launcher_then[1]
            problems.append(
                Problem(
                    where,
                    "launcher",
                    what,
                    allowed=f"the recorded launcher, or {FLAG_LAUNCHER}",
                    fix=(f"`git checkout {sha}` in the launcher's checkout, " if sha else "")
                    + f"`pip install launcher=={launcher_then[0]}`, or pass {FLAG_LAUNCHER}",
                )
            )
    checkouts = (("the recorded run", record.git_dirty), ("this launcher", git_dirty()))
    dirty = [who for who, flag in checkouts if flag]
    if dirty:  # a warning, not a refusal: the commit is all there is to compare, and it may not be the code that ran
        allowed.append(
            f"uncommitted changes in the launcher's checkout ({' and '.join(dirty)}; run.json: git_dirty): "
            "the same commit may not be the same code"
        )

    if target.resolve() == Path(original.spec.output.dir).resolve():
        problems.append(
            Problem(
                where,
                "--output-dir",
                "the reproduction would write over the original run's outputs",
                fix=f"leave --output-dir out (default {original.spec.output.dir}-reproduce) or name a new folder",
            )
        )
    elif any(r.unit(u.unit_id).is_done() for r in runs_of(spec) for u in original.units):
        problems.append(
            Problem(
                str(target),
                "--output-dir",
                "already holds finished units of this run: a reproduction starts from nothing",
                fix="give another --output-dir, or remove that folder",
            )
        )
    if problems:
        raise Refused(problems)
    return ReproductionCheck(original, record, spec, allowed)


def original_clock(run: RunDir) -> PromptClock | None:
    """The time the original's chat templates read (strftime_now): its inputs.json, else its first submission's."""
    found = PromptClock.from_json(read_record(run).get("prompt_clock"))
    if found is None:
        found = PromptClock.from_submitted_at(run.read_run().first.submitted_at)
    return found


def record_reproduction(plan: Plan, check: ReproductionCheck) -> None:
    """The reproduction's run.json names the run it reproduces and what was allowed to differ."""
    record = plan.run.read_run().with_reproduction(check.as_json())
    plan.run.write_json(plan.run.run_json, record.to_json())


def _image_key(record: dict[str, Any]) -> str:
    if record.get("runtime") in (None, "none"):
        return "no container"
    digest = record.get("sha256") or record.get("id") or "unknown digest"
    return f"{record.get('runtime')} {record.get('image')} ({digest})"


def _launcher(version: str | None, sha: str | None) -> str:
    return f"launcher {version}" + (f" at {sha[:12]}" if sha else "")


@dataclass
class CellAgreement:
    cell: str  # [model/|adapter/]dataset/ablation
    original: Path
    reproduced: Path
    byte_identical: bool
    agreement: float | None  # token agreement when both hold token ids (greedy), else None
    records: tuple[int, int]


def agreement(original: Plan, reproduced: Plan) -> list[CellAgreement]:
    """Every dataset x ablation of the two runs: the samples file (jsonl or parquet) byte for byte, then `launcher
    compare`'s measure."""
    from launcher.gather.compare import compare
    from launcher.gather.samples import samples_file

    out = []
    for cell in original.cells():
        a = original.run.cell(cell.rel_dir).root
        b = reproduced.run.cell(cell.rel_dir).root
        sha_a, sha_b = _sha(samples_file(a)), _sha(samples_file(b))
        same = sha_a is not None and sha_a == sha_b
        cmp = compare(a, b)
        out.append(
            CellAgreement(
                cell.label,
                a,
                b,
                same,
                cmp.agreement if cmp.token_level else None,
                (cmp.records_a, cmp.records_b),
            )
        )
    return out


def _sha(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return sha256_file(path)
    except OSError:
        return None


__all__ = [
    "CellAgreement",
    "ReproductionCheck",
    "agreement",
    "check_reproducible",
    "original_clock",
    "record_reproduction",
]
