"""Repeated measurements: the samples of one figure, reported as median with min-max.

A :class:`Figure` keeps every sample, so a report can show the spread and a JSON dump keeps the
raw numbers. :func:`time_calls` is the one timing loop: warm-up calls first (not kept), then
`repeats` samples, each the wall-clock seconds of `calls_per_sample` consecutive calls.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """Samples of one measured quantity, in `unit`.

    Attributes:
        samples: One value per repeated run.
        unit: Unit of the values (``images/s``, ``ms``, ``MiB``, ...).
    """

    samples: tuple[float, ...]
    unit: str = ""

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a figure needs at least one sample, but got none")

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def min(self) -> float:
        return float(min(self.samples))

    @property
    def max(self) -> float:
        return float(max(self.samples))

    def scaled(self, factor: float, unit: str) -> "Figure":
        """Every sample times `factor`, in a new unit."""
        return Figure(tuple(value * factor for value in self.samples), unit)

    def inverse(self, numerator: float, unit: str) -> "Figure":
        """``numerator / sample`` for every sample (seconds per batch -> images/s)."""
        return Figure(tuple(numerator / value if value > 0 else math.inf for value in self.samples), unit)

    def format(self, digits: int = 1) -> str:
        """``median (min-max)``, or the single value when there is one sample."""
        if len(self.samples) == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}-{self.max:.{digits}f})"

    def to_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "unit": self.unit,
                "samples": list(self.samples)}

    @classmethod
    def from_dict(cls, data: dict) -> "Figure":
        return cls(tuple(float(v) for v in data["samples"]), data.get("unit", ""))


def ratio(numerator: Figure, denominator: Figure, unit: str = "x") -> Figure:
    """Sample-by-sample ratio of two figures measured in step (paired runs).

    Raises:
        ValueError: The figures have different sample counts (they were not measured in step).
    """
    if len(numerator.samples) != len(denominator.samples):
        raise ValueError(f"paired ratio needs equal sample counts, but got {len(numerator.samples)} and "
                         f"{len(denominator.samples)}")
    return Figure(tuple(a / b for a, b in zip(numerator.samples, denominator.samples)), unit)


def time_calls(run: Callable[[], object], repeats: int, calls_per_sample: int = 1, warmup: int = 1) -> Figure:
    """Seconds of `calls_per_sample` consecutive calls of `run`, `repeats` times, after `warmup` calls.

    Raises:
        ValueError: `repeats` or `calls_per_sample` below 1, or `warmup` below 0.
    """
    if repeats < 1 or calls_per_sample < 1 or warmup < 0:
        raise ValueError(f"repeats and calls_per_sample should be >= 1 and warmup >= 0, but got {repeats}, "
                         f"{calls_per_sample} and {warmup}")
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls_per_sample):
            run()
        samples.append(time.perf_counter() - started)
    return Figure(tuple(samples), "s")


def percentile(values, q: float) -> float:
    """The `q`-th percentile (0-100, linear interpolation); NaN for no values."""
    import numpy as np  # noqa: PLC0415 - keep this module importable without numpy

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan
