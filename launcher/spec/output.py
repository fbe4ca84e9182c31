"""spec/output.py: the output section: where results and run state go, in what form."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from launcher.spec.common import _plain_path, _Section


class OutputSpec(_Section):
    """Where results and run state go (shared storage), and in what form."""

    dir: str = Field(min_length=1)
    """Shared storage for this job: run state, logs and the gathered <dataset>/<ablation>/ outputs."""
    scratch_dir: str | None = None
    """A node-local scratch folder bound writable into the container (unset: none is bound). Not where the compile
    cache lives: that is ~/.cache/launcher/compile unless LAUNCHER_COMPILE_CACHE names another folder."""
    format: Literal["jsonl", "parquet"] = "jsonl"
    """Format of the gathered samples file."""
    per_user_json: bool = False
    """Also write users/<user_id>.json with generated_samples (the old script's layout)."""
    chunk_records: int = Field(default=64, ge=1, le=100_000)
    """Records per chunk file: the most a killed task can lose and redo."""
    token_ids: bool = False
    """Also store each sample's token ids (`launcher compare` then checks agreement token by token)."""
    share: Literal["group", "private"] | None = None
    """Who may read the gathered outputs: "group" (the output folder's group: folders 2750, files 0640) or "private"
    (you alone: 0700, 0600). Unset: "group" when the output folder is a shared one (group-writable or setgid), else
    as your umask says. Never writable by anyone else, whatever the umask; the run's state (runs/<id>/) is always
    private (0700)."""

    @field_validator("dir", "scratch_dir")
    @classmethod
    def _dir(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _plain_path(value, "the folder")
        # The folder ends up in #SBATCH --output: Slurm expands %j, %A... there, and its parser drops backslashes,
        # so the logs would land in another folder than the one submitit reads.
        if "%" in value or "\\" in value:
            raise ValueError(
                f"{value!r} holds '%' or a backslash, which Slurm reads as a file name pattern (%j = "
                "job id) or an escape in the log paths; use a folder without them"
            )
        return value
