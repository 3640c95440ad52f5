"""Anytime-valid audit of the risk among accepted frames, from the labels of a random audit sample.

The service marks a random share of its accepted frames for audit; their labels come back later, and
each labelled audited frame gives ``X = 1`` if the served label was wrong, else 0. Because the audit
sample is uniform among accepted frames, ``E[X]`` is the risk among accepted frames, the quantity the
calibration promised to keep at most ``alpha``. :class:`RiskAudit` tests that promise label by label,
in both directions, and may be looked at after every label (anytime valid: no multiple-look penalty).

**Tests** (betting, after Waudby-Smith and Ramdas, "Estimating means of bounded random variables by
betting", JRSS-B 2023). Against ``H0: E[X_i | earlier labels] <= alpha`` for every ``i`` the capital
``K_t = prod_i (1 + lambda (X_i - alpha))`` with a fixed ``lambda in [0, 1/alpha)`` is a nonnegative
supermartingale started at 1, and so is any average of such products. By Ville's inequality it ever
reaches ``1/delta`` with probability at most ``delta``:

* ``violated``: the capital against ``H0`` reached ``1/delta``. A false VIOLATED, ever, has probability
  at most ``delta`` as long as the risk stays ``<= alpha``, even if it varies over time. Latched.
* ``verified``: the mirror capital ``prod_i (1 - lambda (X_i - alpha))``, ``lambda in [0, 1/(1-alpha))``,
  against ``H0': E[X_i | earlier labels] >= alpha`` is at or above ``1/delta``; a false VERIFIED, ever,
  has probability at most ``delta`` as long as the risk stays ``>= alpha``. Shown while the evidence
  lasts: a risk that rises later takes it away before it can make the audit VIOLATED.
* ``unverified``: neither. VIOLATED wins over VERIFIED.

Assumptions: the audited frames are a uniform random share of the accepted frames, their labels are
right, and the order in which labels come back does not depend on whether the frame was wrong.

**Bets.** Each capital is the equal-weight average of 16 fixed bets ``lambda = c / alpha`` (mirror:
``c / (1 - alpha)``), ``c`` geometrically spaced from the bet that gains against a risk 10% above
``alpha`` (mirror: 10% below; relative to ``min(alpha, 1 - alpha)``) up to ``c = 0.95``. A fixed bet
is the likelihood ratio of Bernoulli(``alpha``) against one alternative, so the average is a mixture
likelihood ratio: it needs no tuning, adapts to the true risk at the price of a few labels, and is a
function of the counts (labels, errors) alone, so the state is O(1) and restoring it is exact. At
``alpha = 0.05`` and ``delta = 0.05`` the median audit is VIOLATED after about 170 labels at a true risk
of 0.10 (95th percentile about 510; a single bet tuned to that risk needs about 115), 610 at 0.075 and
50 at 0.15; it is VERIFIED after a median of about 150 labels at a true risk of 0.01.

**Bounds.** ``lower`` and ``upper`` are a confidence sequence for a constant risk: the same mixtures
at every candidate risk ``m`` (one-sided, ``delta / 2`` each side), inverted by bisection, intersected
over all label counts so far. A constant risk lies in ``[lower, upper]`` at every label count with
probability at least ``1 - delta``. They are for display; the state comes from the tests at level
``delta``, so it may change a little before a bound crosses ``alpha``.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Mapping

import numpy as np

__all__ = ["AuditState", "RiskAudit", "risk_bounds", "first_violations"]

#: Bets per capital, the largest bet fraction, and the smallest (relative to min(m, 1 - m)).
_BETS = 16
_TOP = 0.95
_FINEST = 0.1
_SPACING = np.linspace(0.0, 1.0, _BETS)
#: Bisection steps of the bounds (2**-40 of the unit interval).
_STEPS = 40


class AuditState(str, Enum):
    """What the audit says of the risk among accepted frames."""

    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    VIOLATED = "violated"


def _log_capital(up: bool, m, labels, errors) -> np.ndarray:
    """The log mixture capital after `labels` labels with `errors` errors, against a risk ``<= m`` (`up`) or
    ``>= m``; arrays broadcast, ``0 < m < 1``."""
    m, t, s = (a.reshape(-1, 1) for a in np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                                              for v in (m, labels, errors))))
    finest = np.minimum(_FINEST * np.minimum(m, 1.0 - m) / ((1.0 - m) if up else m), _TOP)
    c = finest ** (1.0 - _SPACING) * _TOP ** _SPACING
    if up:
        x = s * np.log1p(c * (1.0 - m) / m) + (t - s) * np.log1p(-c)
    else:
        x = s * np.log1p(-c) + (t - s) * np.log1p(c * m / (1.0 - m))
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).mean(axis=1, keepdims=True)))[:, 0]


def risk_bounds(labels, errors, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The confidence bounds on a constant risk after each count, before intersecting over time.

    Args:
        labels: Labels seen (array).
        errors: Errors among them (same shape, or broadcastable).
        delta: Level: both bounds hold at every count at once with probability ``>= 1 - delta``.

    Returns:
        ``(lower, upper)`` flat arrays: the largest risk the ``H0: risk <= m`` mixture rejects (0 if none) and
        the smallest the mirror one rejects (1 if none), each at ``delta / 2``, to 1e-12.
    """
    t, s = (a.reshape(-1) for a in np.broadcast_arrays(np.asarray(labels, np.float64), np.asarray(errors, np.float64)))
    level = math.log(2.0 / delta)
    bounds = []
    for up in (True, False):
        lo, hi = np.zeros_like(t), np.ones_like(t)  # up: lo rejected (or 0); mirror: hi rejected (or 1)
        for _ in range(_STEPS):
            mid = 0.5 * (lo + hi)
            rejected = _log_capital(up, mid, t, s) >= level
            lo, hi = (np.where(rejected, mid, lo), np.where(rejected, hi, mid)) if up else \
                (np.where(rejected, lo, mid), np.where(rejected, mid, hi))
        bounds.append(lo if up else hi)
    return bounds[0], bounds[1]


def first_violations(errors: np.ndarray, alpha: float, delta: float = 0.05) -> np.ndarray:
    """Many independent audits at once (for benchmarks): where each first says VIOLATED.

    Args:
        errors: ``[replicates, T]`` booleans, each row one audit's labels in order (True = wrong).
        alpha, delta: As for :class:`RiskAudit`.

    Returns:
        Per replicate, the 0-based index of the label at which the audit first said VIOLATED (so the labels it
        took are the index + 1), or -1; the same as :class:`RiskAudit` label by label.
    """
    _check(alpha, delta)
    x = np.asarray(errors)
    if x.ndim != 2:
        raise ValueError(f"errors should be an array [replicates, T], but has shape {x.shape}")
    s = np.cumsum(x.astype(np.int64), axis=1)
    t = np.arange(1, x.shape[1] + 1)
    # The capital grows with the errors at a given count: the fewest errors that reach 1/delta at each count.
    lo, hi, level = np.zeros_like(t), t + 1, math.log(1.0 / delta)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        reached = (lo < hi) & (_log_capital(True, alpha, t, np.minimum(mid, t)) >= level)
        lo, hi = np.where((lo < hi) & ~reached, mid + 1, lo), np.where(reached, mid, hi)
    crossed = s >= lo
    return np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)


def _check(alpha: float, delta: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"the audited risk level alpha should be in (0, 1), but got {alpha!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"the audit's delta should be in (0, 1), but got {delta!r}")


class RiskAudit:
    """The audit of one camera's (or one bundle's) risk among accepted frames (see the module docstring).

    Args:
        alpha: The promised bound on the risk among accepted frames, in ``(0, 1)``.
        delta: The audit's error probability, in ``(0, 1)``.

    Attributes:
        labels: Labels seen.
        errors: Errors among them.
        lower, upper: The confidence sequence for the risk, intersected over all counts so far.
        labels_to_violation: The label count at which the audit first said VIOLATED (None: not yet).
        state: The audit's verdict.
    """

    def __init__(self, alpha: float, delta: float = 0.05):
        _check(alpha, delta)
        self.alpha, self.delta = float(alpha), float(delta)
        self._level = math.log(1.0 / self.delta)
        self.reset()

    def reset(self) -> None:
        """Back to the start: no labels, bounds [0, 1], ``unverified``."""
        self.labels = self.errors = 0
        self.lower, self.upper = 0.0, 1.0
        self.labels_to_violation: int | None = None
        self.state = AuditState.UNVERIFIED

    def guarantee(self) -> str:
        """One line: what the verdicts and the bounds promise."""
        a, d = f"{100 * self.alpha:.3g}%", f"{100 * self.delta:.3g}%"
        return (f"the audit says VIOLATED, ever, with probability <= {d} while the risk among accepted frames stays "
                f"<= {a}, and VERIFIED, ever, with probability <= {d} while it stays >= {a}; a constant risk lies in "
                f"[lower, upper] at every label count with probability >= {100 * (1 - self.delta):.3g}%")

    def update(self, error: bool) -> AuditState:
        """Take one label: True if the served label of the audited frame was wrong."""
        return self.update_many([error])

    def update_many(self, errors) -> AuditState:
        """Take labels in the order they came: the same result as :meth:`update` one by one.

        Args:
            errors: Booleans (or 0/1), True = the served label was wrong.

        Returns:
            The state after the last label.
        """
        x = np.asarray(errors).reshape(-1)
        if x.size == 0:
            return self.state
        if not np.isin(x, (0, 1)).all():
            raise ValueError("audit labels should be booleans (True = the served label was wrong)")
        t = self.labels + np.arange(1, x.size + 1)
        s = self.errors + np.cumsum(x.astype(np.int64))
        if self.labels_to_violation is None:
            reached = np.flatnonzero(_log_capital(True, self.alpha, t, s) >= self._level)
            if reached.size:
                self.labels_to_violation = int(t[reached[0]])
        lower, upper = risk_bounds(t, s, self.delta)
        self.lower, self.upper = max(self.lower, float(lower.max())), min(self.upper, float(upper.min()))
        self.labels, self.errors = int(t[-1]), int(s[-1])
        self.state = self._verdict()
        return self.state

    def _verdict(self) -> AuditState:
        if self.labels_to_violation is not None:
            return AuditState.VIOLATED
        if self.labels and _log_capital(False, self.alpha, self.labels, self.errors)[0] >= self._level:
            return AuditState.VERIFIED
        return AuditState.UNVERIFIED

    def to_dict(self) -> dict:
        """Plain JSON/msgpack-safe data of the state (O(1): counts, bounds, alpha and delta)."""
        return {"alpha": self.alpha, "delta": self.delta, "labels": self.labels, "errors": self.errors,
                "lower": self.lower, "upper": self.upper, "labels_to_violation": self.labels_to_violation}

    @classmethod
    def from_dict(cls, data: Mapping, alpha: float | None = None, delta: float | None = None) -> "RiskAudit":
        """The audit in the state `data` records.

        Args:
            data: What :meth:`to_dict` returned.
            alpha, delta: The audit's levels now (None: the recorded ones); a state made for others is refused.

        Raises:
            ValueError: `data` is malformed, or was made for another alpha or delta (start afresh then).
        """
        keys = {"alpha", "delta", "labels", "errors", "lower", "upper", "labels_to_violation"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ValueError(f"an audit state should have the keys {', '.join(sorted(keys))}")
        audit = cls(float(data["alpha"]), float(data["delta"]))
        if (alpha is not None and float(alpha) != audit.alpha) or (delta is not None and float(delta) != audit.delta):
            raise ValueError(f"the audit state was made for alpha {audit.alpha!r}, delta {audit.delta!r}, "
                             f"not {alpha!r}, {delta!r}")
        labels, errors, at = data["labels"], data["errors"], data["labels_to_violation"]
        lower, upper = float(data["lower"]), float(data["upper"])
        if not (isinstance(labels, int) and isinstance(errors, int) and 0 <= errors <= labels
                and 0.0 <= lower <= 1.0 and 0.0 <= upper <= 1.0
                and (at is None or (isinstance(at, int) and 0 < at <= labels))):
            raise ValueError("the audit state has out-of-range values")
        audit.labels, audit.errors, audit.lower, audit.upper, audit.labels_to_violation = \
            labels, errors, lower, upper, at
        audit.state = audit._verdict()
        return audit
