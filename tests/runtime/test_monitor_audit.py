"""The audit of the risk among accepted frames: its verdicts, their error rates, its bounds, its state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trustvlm.runtime.monitor.audit import AuditState, RiskAudit, _log_capital, first_violations, risk_bounds

ALPHA, DELTA = 0.05, 0.05


def kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def unique_counts(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (labels, errors) pairs of running error counts ``[replicates, T]``, and where each entry's is."""
    labels = np.broadcast_to(np.arange(1, errors.shape[1] + 1), errors.shape)
    codes, where = np.unique(labels * (errors.shape[1] + 1) + errors, return_inverse=True)
    return codes // (errors.shape[1] + 1), codes % (errors.shape[1] + 1), where.reshape(errors.shape)


def slack(p: float, n: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / n)


def test_a_risk_above_alpha_is_found_violated_within_the_labels_the_bets_predict():
    rng = np.random.default_rng(0)
    replicates = 2000
    first = first_violations(rng.random((replicates, 2000)) < 0.10, ALPHA, DELTA)
    assert (first >= 0).all()
    labels = first + 1
    # The best single bet needs log(1/delta) / KL labels on average; the mixture of 16 is at least 1/16 of its bet
    # nearest that one (growth within 3%), so it needs no more than log(16/delta) / (0.97 KL) on average
    oracle = math.log(1 / DELTA) / kl(0.10, ALPHA)
    assert 0.5 * oracle <= np.median(labels) <= math.log(16 / DELTA) / (0.97 * kl(0.10, ALPHA)) <= 500
    assert np.percentile(labels, 95) <= 700


@pytest.mark.parametrize("risk", ["alpha", "below", "varying"])
def test_a_risk_that_stays_at_most_alpha_is_rarely_found_violated(risk):
    rng = np.random.default_rng(1)
    replicates, labels = 4000, 2000
    p = {"alpha": np.full(labels, ALPHA), "below": np.full(labels, ALPHA - 0.02),
         "varying": np.where(np.arange(labels) % 400 < 200, 0.0, ALPHA)}[risk]
    false = (first_violations(rng.random((replicates, labels)) < p, ALPHA, DELTA) >= 0).mean()
    assert false <= DELTA + slack(DELTA, replicates)


def test_a_low_risk_is_verified_and_verification_is_rarely_false():
    rng = np.random.default_rng(2)
    for _ in range(5):
        audit = RiskAudit(ALPHA, DELTA)
        assert audit.update_many(rng.random(1000) < 0.01) is AuditState.VERIFIED
        assert audit.upper < ALPHA and audit.labels_to_violation is None
    # At risk alpha (the mirror null holds) the mirror capital reaches 1/delta in at most delta of the audits
    replicates, labels = 2000, 1000
    errors = np.cumsum(rng.random((replicates, labels)) < ALPHA, axis=1)
    count, seen, where = unique_counts(errors)
    capital = _log_capital(False, ALPHA, count, seen)[where]
    false = (capital >= math.log(1 / DELTA)).any(axis=1).mean()
    assert false <= DELTA + slack(DELTA, replicates)


@pytest.mark.parametrize("risk", [0.02, 0.1, 0.3])
def test_the_bounds_hold_a_constant_risk_at_every_count_at_the_stated_rate(risk):
    rng = np.random.default_rng(3)
    replicates, labels = 400, 600
    errors = np.cumsum(rng.random((replicates, labels)) < risk, axis=1)
    count, seen, where = unique_counts(errors)
    lower, upper = (bound[where] for bound in risk_bounds(count, seen, DELTA))
    lower, upper = np.maximum.accumulate(lower, axis=1), np.minimum.accumulate(upper, axis=1)
    missed = ((lower > risk) | (upper < risk)).any(axis=1).mean()
    assert missed <= DELTA + slack(DELTA, replicates)
    # Not vacuous: after 600 labels the interval is within a few standard errors of the truth
    width = upper[:, -1] - lower[:, -1]
    assert np.median(width) < 8 * math.sqrt(risk * (1 - risk) / labels)
    # The audit's own bounds are the same running intersection
    audit = RiskAudit(ALPHA, DELTA)
    for chunk in np.array_split(np.diff(errors[0], prepend=0), 7):
        audit.update_many(chunk)
    assert (audit.lower, audit.upper) == (lower[0, -1], upper[0, -1])


def test_the_audit_and_first_violations_agree_label_by_label():
    rng = np.random.default_rng(4)
    errors = rng.random((30, 600)) < 0.10
    first = first_violations(errors, ALPHA, DELTA)
    for row, at in zip(errors, first):
        audit = RiskAudit(ALPHA, DELTA)
        audit.update_many(row)
        assert audit.labels_to_violation == (at + 1 if at >= 0 else None)
        assert (audit.state is AuditState.VIOLATED) == (at >= 0)


def test_update_many_is_update_one_by_one_and_violated_is_latched():
    rng = np.random.default_rng(5)
    errors = np.r_[rng.random(160) < 0.25, np.zeros(200, dtype=bool)]  # a bad spell, then a long good one
    one, many = RiskAudit(ALPHA, DELTA), RiskAudit(ALPHA, DELTA)
    states = [one.update(bool(e)) for e in errors[:200]]
    one.update_many(errors[200:])
    for chunk in np.array_split(errors, 5):
        many.update_many(chunk.astype(int))
    assert one.to_dict() == many.to_dict()
    assert AuditState.VIOLATED in states and one.state is AuditState.VIOLATED
    assert states.index(AuditState.VIOLATED) + 1 == one.labels_to_violation
    assert one.lower > ALPHA  # the bad spell is not forgotten: the bounds are for a constant risk


def test_a_restored_audit_goes_on_like_the_uninterrupted_one():
    rng = np.random.default_rng(6)
    errors = rng.random(400) < 0.08
    whole, half = RiskAudit(ALPHA, DELTA), RiskAudit(ALPHA, DELTA)
    whole.update_many(errors[:150])
    half.update_many(errors[:150])
    data = json.loads(json.dumps(half.to_dict()))
    restored = RiskAudit.from_dict(data, ALPHA, DELTA)
    assert RiskAudit.from_dict(data).to_dict() == restored.to_dict() == whole.to_dict()
    assert restored.update_many(errors[150:]) is whole.update_many(errors[150:])
    assert restored.to_dict() == whole.to_dict()


def test_a_state_for_other_levels_or_a_malformed_one_is_refused():
    audit = RiskAudit(ALPHA, DELTA)
    audit.update_many([True, False, False])
    data = audit.to_dict()
    with pytest.raises(ValueError, match="made for alpha 0.05, delta 0.05"):
        RiskAudit.from_dict(data, 0.1, DELTA)
    with pytest.raises(ValueError, match="made for"):
        RiskAudit.from_dict(data, ALPHA, 0.01)
    for broken in ({**data, "errors": 4}, {**data, "labels": -1}, {**data, "upper": 1.5},
                   {**data, "labels_to_violation": 9}, {k: v for k, v in data.items() if k != "lower"}, [1, 2]):
        with pytest.raises(ValueError):
            RiskAudit.from_dict(broken, ALPHA, DELTA)


@pytest.mark.parametrize("alpha, delta", [(0.0, 0.05), (1.0, 0.05), (0.05, 0.0), (0.05, 1.0), (math.nan, 0.05)])
def test_bad_levels_are_refused(alpha, delta):
    with pytest.raises(ValueError):
        RiskAudit(alpha, delta)
    with pytest.raises(ValueError):
        first_violations(np.zeros((2, 3), dtype=bool), alpha, delta)


def test_labels_are_booleans_and_reset_starts_afresh():
    audit = RiskAudit(ALPHA, DELTA)
    with pytest.raises(ValueError, match="booleans"):
        audit.update_many([0, 2])
    assert audit.update_many([]) is AuditState.UNVERIFIED and audit.labels == 0
    audit.update_many(np.ones(60, dtype=bool))
    assert audit.state is AuditState.VIOLATED and audit.lower > ALPHA
    audit.reset()
    assert (audit.state, audit.labels, audit.errors, audit.lower, audit.upper, audit.labels_to_violation) == \
        (AuditState.UNVERIFIED, 0, 0, 0.0, 1.0, None)


def test_the_guarantee_is_stated_in_one_line():
    assert RiskAudit(0.05, 0.05).guarantee() == (
        "the audit says VIOLATED, ever, with probability <= 5% while the risk among accepted frames stays <= 5%, "
        "and VERIFIED, ever, with probability <= 5% while it stays >= 5%; a constant risk lies in [lower, upper] "
        "at every label count with probability >= 95%")
