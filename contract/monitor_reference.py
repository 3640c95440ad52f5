"""The guarantee monitor's reference sample: what a bundle records of in-distribution frames to compare new ones with.

A bundle's risk guarantee holds while a camera's frames are exchangeable with its calibration images. The
runtime's label-free monitor (:mod:`trustvlm.runtime.monitor.drift`) tests that online: each thinned frame's
statistics are ranked among this sample's. Calibration records, for held-out images that fitted nothing the
statistic depends on, each statistic's values (sorted; the images themselves are not kept):

=================  ============================================================================================
statistic          values
=================  ============================================================================================
``score``          the served trust score (the bundle's ``score``; higher = more confident). Its function is
                   fixed by the shots and, with ``lam auto``, the lambda half of the held-out images: the
                   sample comes from the other half.
``typicality``     the out-of-distribution gate's typicality (higher = more like the calibration images), when
                   the bundle has a gate. The gate's class means and covariances are fitted on other images;
                   its per-component cuts are set on the threshold half this sample is drawn from, a
                   dependence of one order statistic per component that the monitor's false-alarm bound does
                   not cover (its measured false-alarm rate does: ``python -m trustvlm.benchmarks.drift``).
=================  ============================================================================================

Low values are the suspicious ones for every statistic. ``rows`` images gave the sample (every statistic has a
value for each); ``source`` says which held-out images they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MONITOR_STATISTICS", "MIN_REFERENCE_ROWS", "MonitorReference"]

#: The statistics a reference sample may hold, in the order the monitor reads them.
MONITOR_STATISTICS: tuple[str, ...] = ("score", "typicality")
#: Fewest reference images the monitor can rank a frame among with any power (1 / (n + 1) is its smallest p-value).
MIN_REFERENCE_ROWS = 20


@dataclass(frozen=True)
class MonitorReference:
    """What bundle.json records in ``monitor_reference``.

    Attributes:
        rows: How many held-out images the values come from.
        source: Which images they were, in words (e.g. "held-out images of the threshold half, not the gate's fit").
        statistics: Statistic name (in :data:`MONITOR_STATISTICS`) -> its ``rows`` values, sorted ascending.
    """

    rows: int
    source: str
    statistics: dict[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < MIN_REFERENCE_ROWS:
            raise ValueError(f"monitor_reference: rows should be an integer >= {MIN_REFERENCE_ROWS}, but got "
                             f"{self.rows!r}")
        unknown = sorted(set(self.statistics) - set(MONITOR_STATISTICS))
        if unknown or "score" not in self.statistics:
            raise ValueError(f"monitor_reference: statistics should include 'score' and only names in "
                             f"{MONITOR_STATISTICS}, but got {sorted(self.statistics)}")
        for name, values in self.statistics.items():
            if len(values) != self.rows or not all(isinstance(v, float) and math.isfinite(v) for v in values):
                raise ValueError(f"monitor_reference: {name} should have {self.rows} finite values, but got "
                                 f"{len(values)}")
            if any(a > b for a, b in zip(values, values[1:])):
                raise ValueError(f"monitor_reference: {name}'s values should be sorted ascending")

    @classmethod
    def from_values(cls, source: str, **values) -> "MonitorReference":
        """From unsorted arrays of equal length (statistic name -> values; None entries are left out)."""
        kept = {name: tuple(sorted(float(v) for v in column)) for name, column in values.items() if column is not None}
        lengths = {len(column) for column in kept.values()}
        if len(lengths) != 1:
            raise ValueError(f"monitor_reference: every statistic needs one value per image, but got lengths "
                             f"{sorted(lengths)}")
        return cls(lengths.pop(), source, kept)

    def to_dict(self) -> dict:
        """JSON-safe; :meth:`from_dict` restores an equal object."""
        return {"rows": self.rows, "source": self.source,
                "statistics": {name: list(values) for name, values in self.statistics.items()}}

    @classmethod
    def from_dict(cls, data) -> "MonitorReference":
        """Inverse of :meth:`to_dict`; ValueError on anything else."""
        if not isinstance(data, dict) or set(data) != {"rows", "source", "statistics"}:
            raise ValueError(f"monitor_reference should be a map with keys rows, source, statistics, but got "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        statistics = data["statistics"]
        if not isinstance(statistics, dict) or not all(isinstance(v, list) for v in statistics.values()):
            raise ValueError("monitor_reference: statistics should map names to lists of numbers")
        try:
            columns = {name: tuple(float(v) for v in values) for name, values in statistics.items()}
        except (TypeError, ValueError) as error:
            raise ValueError(f"monitor_reference: a statistic holds a value that is not a number ({error})") from None
        return cls(data["rows"], str(data["source"]), columns)

    def describe(self) -> str:
        """One line: what the monitor compares frames with."""
        return f"monitor reference: {self.rows} held-out images ({', '.join(self.statistics)})"
