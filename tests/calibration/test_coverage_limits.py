"""Tests of the coverage yardsticks: the certifiable limit and the oracle coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trustvlm.calibration.coverage_limits import CoverageLimit, certifiable_limit, oracle_coverage
from trustvlm.calibration.threshold_selection import select_threshold

stats = pytest.importorskip("scipy.stats")


def draw(seed: int, m: int, levels: int = 0):
    rng = np.random.default_rng(seed)
    u = rng.random(m)
    corr = rng.random(m) >= 0.02 + 0.5 * u**2
    return (1 - u if not levels else 1 - np.floor(u * levels) / levels), corr


def brute_force(conf, corr, keep):
    """The lowest distinct score t whose accepted set (n, e) passes `keep(n, e)`, by plain loops."""
    best = None
    for t in sorted(set(conf.tolist())):
        accepted = conf >= t
        n, e = int(accepted.sum()), int((~corr[accepted]).sum())
        if keep(n, e) and (best is None or n > best[1]):
            best = (t, n, e)
    return best


def same(a: CoverageLimit, b: CoverageLimit) -> bool:
    """Equality where NaN equals NaN."""
    return (a.coverage, a.threshold) == (b.coverage, b.threshold) and (
        a.empirical_risk == b.empirical_risk or (math.isnan(a.empirical_risk) and math.isnan(b.empirical_risk)))


def expected(found, m):
    if found is None:
        return CoverageLimit(0.0, math.inf, math.nan)
    return CoverageLimit(found[1] / m, found[0], found[2] / found[1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [0, 15])
def test_limits_match_a_brute_force_scan(seed, levels):
    conf, corr = draw(seed, 300, levels)
    alpha, delta = 0.1, 0.1
    cert = certifiable_limit(conf, corr, alpha, delta)
    assert same(cert, expected(brute_force(conf, corr, lambda n, e: stats.binom.cdf(e, n, alpha) <= delta), 300))
    oracle = oracle_coverage(conf, corr, alpha)
    assert same(oracle, expected(brute_force(conf, corr, lambda n, e: e / n <= alpha), 300))
    assert oracle.coverage > 0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [0, 30])
def test_oracle_bounds_certifiable_bounds_the_ltt_choice(seed, levels):
    conf, corr = draw(100 + seed, 2000, levels)
    for alpha, delta in ((0.05, 0.1), (0.1, 0.05), (0.2, 0.2)):
        choice = select_threshold(conf, corr, alpha, delta)
        cert = certifiable_limit(conf, corr, alpha, delta)
        oracle = oracle_coverage(conf, corr, alpha)
        assert oracle.coverage >= cert.coverage >= choice.coverage
        assert oracle.threshold <= cert.threshold <= choice.threshold
    assert choice.feasible and choice.coverage > 0  # at alpha 20% every draw certifies something


def test_nothing_qualifies():
    conf = np.linspace(0, 1, 40)
    wrong_everywhere = np.zeros(40, bool)
    for limit in (certifiable_limit(conf, wrong_everywhere, 0.05, 0.1), oracle_coverage(conf, wrong_everywhere, 0.05),
                  certifiable_limit(conf, np.ones(40, bool), 0.05, 0.1),  # 40 right answers cannot show 5% at 10%
                  certifiable_limit([], [], 0.05, 0.1), oracle_coverage([], [], 0.05)):
        assert limit.coverage == 0.0 and limit.threshold == math.inf and math.isnan(limit.empirical_risk)
    assert oracle_coverage(conf, np.ones(40, bool), 0.05).coverage == 1.0


def test_input_errors():
    with pytest.raises(ValueError, match=r"alpha should be in \(0, 1\)"):
        oracle_coverage([0.5], [1], 1.5)
    with pytest.raises(ValueError, match=r"delta should be in \(0, 1\)"):
        certifiable_limit([0.5], [1], 0.1, 0.0)
    with pytest.raises(ValueError, match="finite"):
        certifiable_limit([0.5, math.inf], [1, 1], 0.1, 0.1)
    with pytest.raises(ValueError, match="same length"):
        oracle_coverage([0.5, 0.2], [1], 0.1)
