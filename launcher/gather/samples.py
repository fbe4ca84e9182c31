"""gather/samples.py: read a gathered cell's samples, whichever format output.format wrote them in.

The gather writes one of samples.jsonl (the default) or samples.parquet per <dataset>/<ablation> folder; every
reader of gathered samples (report, compare, reproduce, `launcher batch`'s output) goes through here so that a
parquet run reads the same as a jsonl one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.store import SAMPLE_FILES, read_jsonl  # SAMPLE_FILES: output.format -> the file the gather writes


def samples_file(cell: Path) -> Path | None:
    """The gathered samples file of a cell folder (or the file itself); None when there is none."""
    if cell.is_file():
        return cell
    return next((cell / name for name in SAMPLE_FILES.values() if (cell / name).is_file()), None)


def read_samples(cell: Path) -> Iterator[dict[str, Any]]:
    """The rows of a cell's samples.jsonl or samples.parquet (a folder or the file); nothing when there is none."""
    path = samples_file(cell)
    if path is None:
        return iter(())
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return iter(pq.read_table(path).to_pylist())
    return read_jsonl(path)
