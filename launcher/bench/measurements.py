"""bench/measurements.py: how a results.json's measurements are found and ordered (one system on one shape; shapes
by the numbers in their names), in a module of its own so that the tables (bench/report.py) and the plots
(bench/report_plots.py) read them one way without importing each other."""

from __future__ import annotations

import re
from typing import Any


def measurement_of(ms: list[dict[str, Any]], system: str, shape: str) -> dict[str, Any] | None:
    return next((m for m in ms if m["system"] == system and m["shape"] == shape), None)


def shape_order(shape: str) -> list[int]:
    """1000x256 < 4000x512 < cells-4x3x200x256 < cells-1x3x216x256-p2048+128: by the numbers in the name."""
    return [int(x) for x in re.findall(r"\d+", shape)]


__all__ = ["measurement_of", "shape_order"]
