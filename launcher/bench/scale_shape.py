"""bench/scale_shape.py: the shape of one scale run (workers, units, records per unit, per-record latency), the one
thing the run (bench/scale.py), its flags (bench/scale_cli.py) and its figures (bench/scale_figures.py) all read: a
module of its own so that the figures need not import the run that imports them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleShape:
    workers: int
    units: int
    records_per_unit: int = 2
    latency_s: float = 5.0  # per record: a unit takes records_per_unit x latency_s
    ablations: int = 10  # units = ablations x shards of one dataset (reading a shard reads its file from the top)
    num_samples: int = 1

    @property
    def name(self) -> str:
        return f"scale-{self.workers}x{self.units}"

    @property
    def unit_s(self) -> float:
        return self.records_per_unit * self.latency_s

    @property
    def ideal_s(self) -> float:
        return self.units * self.unit_s / self.workers

    def check(self) -> None:
        """SpecError (exit 2) for flags no scale run can have, before any worker starts."""
        from launcher.errors import SpecError

        if self.workers < 1 or self.units < 1 or self.records_per_unit < 1 or self.latency_s < 0:
            raise SpecError.one(
                "--scale-*",
                "",
                f"workers, units and records per unit must be >= 1, latency >= 0 ({self})",
                fix="e.g. --scale-workers 32 --scale-units 500",
            )
        if self.units % self.ablations:
            raise SpecError.one(
                "--scale-units",
                "",
                f"{self.units} is not a multiple of --scale-ablations {self.ablations}: the run's units are "
                "ablations x shards",
                fix=f"e.g. --scale-units {max(1, self.units // self.ablations) * self.ablations}",
            )


__all__ = ["ScaleShape"]
