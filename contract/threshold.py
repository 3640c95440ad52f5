"""The threshold record: an accept threshold with its risk guarantee, as bundle.json stores it."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from trustvlm.contract.files import json_safe

__all__ = ["ThresholdChoice"]


def _float_from_json(v, name: str) -> float:
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise ValueError(f"{name}: expected a number or 'nan'/'inf'/'-inf', got {v!r}")
        return float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ThresholdChoice:
    """An acceptance threshold: accept a prediction iff ``confidence >= threshold``.

    Attributes:
        threshold: the score cut; ``+inf`` when infeasible (defer everything).
        alpha: target selective risk (error rate among accepted).
        delta: allowed probability that the true selective risk exceeds ``alpha``.
        coverage: share of calibration samples accepted (0.0 when infeasible).
        empirical_risk: error rate among accepted calibration samples (NaN when
            infeasible: nothing is accepted).
        risk_upper_bound: the upper confidence bound used for the decision (NaN when
            infeasible).
        n_calibration: number of calibration samples.
        feasible: whether a threshold passed the method's test (its ``risk_upper_bound`` is then
            at most alpha).
        method: how it was chosen: ``"ltt-fixed-sequence-binomial"`` (Learn then Test, the
            default of ``trustvlm.calibration.threshold_selection.select_threshold``) or
            ``"sgr-clopper-pearson"`` (SGR; every bundle written before LTT says this). Any
            string is read back as it is.
    """

    threshold: float
    alpha: float
    delta: float
    coverage: float
    empirical_risk: float
    risk_upper_bound: float
    n_calibration: int
    feasible: bool
    method: str

    def to_dict(self) -> dict:
        """JSON-safe dict (non-finite floats as the strings 'inf', '-inf', 'nan').

        ``ThresholdChoice.from_dict(d)`` restores every field exactly, also after
        ``json.loads(json.dumps(d, allow_nan=False))``.
        """
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "n_calibration":
                out[f.name] = int(v)
            elif f.name == "feasible":
                out[f.name] = bool(v)
            elif f.name == "method":
                out[f.name] = str(v)
            else:
                out[f.name] = json_safe(float(v))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ThresholdChoice":
        """Inverse of :meth:`to_dict`; ValueError on missing, unknown or mistyped keys."""
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in d]
        unknown = sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"ThresholdChoice.from_dict: missing keys {missing}, unknown keys {unknown}")
        kwargs = {}
        for k in names:
            v = d[k]
            if k == "n_calibration":
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise ValueError(f"n_calibration: expected an int, got {v!r}")
                kwargs[k] = int(v)
            elif k == "feasible":
                if not isinstance(v, bool):
                    raise ValueError(f"feasible: expected a bool, got {v!r}")
                kwargs[k] = v
            elif k == "method":
                if not isinstance(v, str):
                    raise ValueError(f"method: expected a str, got {v!r}")
                kwargs[k] = v
            else:
                kwargs[k] = _float_from_json(v, k)
        return cls(**kwargs)
