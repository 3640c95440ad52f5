"""Tests of the default accept threshold (Learn then Test, fixed-sequence testing) and its exact binomial test."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from trustvlm.calibration import risk_bound as B
from trustvlm.calibration import threshold_selection as S
from trustvlm.calibration.evaluate import EvalConfig
from trustvlm.contract.threshold import ThresholdChoice

stats = pytest.importorskip("scipy.stats")


# --------------------------------------------------------------------------- the exact binomial test


def test_critical_errors_match_scipy():
    for alpha, delta in ((0.05, 0.1), (0.2, 0.01), (0.5, 0.3)):
        table = B.binomial_critical_errors(600, alpha, delta)
        n = np.arange(601)
        # scipy's smallest e with CDF > delta, minus one; and the table's counts do pass
        expected = stats.binom.ppf(delta, n, alpha).astype(np.int64)
        expected -= stats.binom.cdf(expected, n, alpha) > delta
        assert np.array_equal(table, expected), (alpha, delta)
    # and at large n, where the table is followed step by step over 100,000 trials
    n = np.arange(0, 100_001, 997)
    expected = stats.binom.ppf(0.01, n, 0.5).astype(np.int64)
    expected -= stats.binom.cdf(expected, n, 0.5) > 0.01
    assert np.array_equal(B.binomial_critical_errors(100_000, 0.5, 0.01)[n], expected)
    # (1 - 0.05)^n <= 0.1 first at n = 45: the fewest samples with which any test rejects
    table = B.binomial_critical_errors(50, 0.05, 0.1)
    assert table[44] == -1 and table[45] == 0


def test_pvalue_matches_scipy_and_agrees_with_the_clopper_pearson_bound():
    tables = {(alpha, delta): B.binomial_critical_errors(2420, alpha, delta)
              for alpha in (0.01, 0.05, 0.3) for delta in (0.05, 0.1)}
    for n in (1, 10, 45, 300, 2420):
        for e in sorted({0, 1, n // 20, n // 10, n - 1, n}):
            for alpha in (0.01, 0.05, 0.3):
                p = B.binomial_pvalue(e, n, alpha)
                assert p == pytest.approx(min(1.0, stats.binom.cdf(e, n, alpha)), rel=1e-9, abs=1e-300)
                for delta in (0.05, 0.1):
                    rejects = e <= tables[alpha, delta][n]
                    assert rejects == (p <= delta)
                    if abs(p - delta) > 1e-9:  # away from the boundary, the bound says the same
                        assert rejects == (B.binomial_upper_bound(e, n, delta) <= alpha)
    assert B.binomial_pvalue(0, 0, 0.1) == 1.0


def test_binomial_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"alpha should be in \(0, 1\)"):
        B.binomial_pvalue(1, 10, 0.0)
    with pytest.raises(ValueError, match="errors <= n"):
        B.binomial_pvalue(11, 10, 0.1)
    with pytest.raises(ValueError, match="n_max should be an integer >= 0"):
        B.binomial_critical_errors(-1, 0.1, 0.1)


# --------------------------------------------------------------------------- LTT against a plain reference


def reference_ltt(conf, corr, alpha, delta):
    """The module docstring's procedure written out plainly, with scipy's binomial CDF."""
    m = len(conf)
    k = 1
    while True:  # K sequences at delta / K, starts n_min * 4^i <= m
        level = delta / k
        n_min = next((n for n in range(1, m + 1) if stats.binom.cdf(0, n, alpha) <= level), None)
        starts = [] if n_min is None else [n_min * 4**i for i in range(k + 1) if n_min * 4**i <= m]
        if len(starts) <= k:
            break
        k += 1
    values = sorted(set(conf.tolist()), reverse=True)
    accepted = [int(np.sum(conf >= v)) for v in values]
    errors = [int(np.sum(~corr[conf >= v])) for v in values]
    best = None
    for n_start in starts:
        j = next(i for i, n in enumerate(accepted) if n >= n_start)
        while j < len(values) and stats.binom.cdf(errors[j], accepted[j], alpha) <= level:
            best = j if best is None else max(best, j)
            j += 1
    if best is None:
        return None
    return values[best], accepted[best], errors[best], level


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [0, 12])
def test_ltt_matches_the_reference(seed, levels):
    # Given small calibration sets, some with tied scores (12 levels), at a few (alpha, delta)
    rng = np.random.default_rng(seed)
    m = int(rng.integers(60, 400))
    u = rng.random(m)
    corr = rng.random(m) >= 0.5 * u**2 + 0.02
    conf = 1 - u if not levels else 1 - np.floor(u * levels) / levels
    alpha, delta = [(0.1, 0.1), (0.2, 0.2), (0.05, 0.3), (0.15, 0.05)][seed % 4]
    # When LTT chooses a threshold
    choice = S.select_threshold(conf, corr, alpha, delta)
    ref = reference_ltt(conf, corr, alpha, delta)
    # Then it is the reference's, with the reference's figures
    assert choice.method == S.LTT_METHOD
    if ref is None:
        assert not choice.feasible and choice.threshold == math.inf
        return
    threshold, n_acc, errors, level = ref
    assert choice.feasible and choice.threshold == threshold
    assert choice.coverage == n_acc / m and choice.empirical_risk == errors / n_acc
    assert choice.risk_upper_bound == pytest.approx(stats.beta.ppf(1 - level, errors + 1, n_acc - errors), rel=1e-9)
    assert choice.risk_upper_bound <= alpha * (1 + 1e-9)
    assert int(np.sum(conf >= choice.threshold)) == n_acc  # a tie is accepted or deferred as a whole


def test_sequence_starts_cover_the_calibration_set():
    assert S.sequence_starts(44, 0.05, 0.1) == ([], 0.1)  # 44 error-free samples cannot show 5% at 10%
    assert S.sequence_starts(100, 0.05, 0.1) == ([45], 0.1)
    starts, level = S.sequence_starts(2420, 0.05, 0.1)
    assert level == pytest.approx(0.1 / len(starts))
    n_min = int(np.argmax(B.binomial_critical_errors(2420, 0.05, level) >= 0))
    assert starts == [n_min * 4**i for i in range(len(starts))] and starts[-1] <= 2420 < 4 * starts[-1]


def test_ltt_survives_confident_errors_at_the_top():
    # Given 4,000 samples whose 40 most confident are 25% wrong and the rest 1% wrong up to
    # 70% coverage: a single sequence from the top stops at once, the later starts do not
    rng = np.random.default_rng(11)
    m = 4000
    u = (np.arange(m) + 0.5) / m
    conf = 1 - u
    p_wrong = np.where(u < 0.01, 0.25, np.where(u < 0.7, 0.01, 0.5))
    corr = rng.random(m) >= p_wrong
    choice = S.select_threshold(conf, corr, 0.05, 0.1)
    # 0.757: the population's own largest coverage at 5% risk
    assert choice.feasible and 0.5 < choice.coverage <= 0.757
    # whereas one sequence from the top, even at the full delta, rejects nothing
    _, accepted, errors = S.score_blocks(conf, corr)
    critical = B.binomial_critical_errors(m, 0.05, 0.1)
    assert not errors[0] <= critical[accepted[0]]


# --------------------------------------------------------------------------- ties, infeasible, grid, options


def test_ties_are_accepted_or_deferred_as_a_whole():
    conf = np.repeat([0.9, 0.7, 0.5], [400, 400, 400])
    corr = np.ones(1200, bool)
    corr[400:420] = False  # 5% wrong at 0.7
    corr[800:1000] = False  # half wrong at 0.5
    choice = S.select_threshold(conf, corr, alpha=0.1, delta=0.1)
    assert choice.threshold == 0.7 and choice.coverage == pytest.approx(800 / 1200)
    all_tied = S.select_threshold(np.full(1000, 0.5), np.arange(1000) >= 20, alpha=0.05, delta=0.1)
    assert all_tied.feasible and all_tied.coverage == 1.0
    bad = S.select_threshold(np.full(1000, 0.5), np.arange(1000) >= 200, alpha=0.05, delta=0.1)
    assert not bad.feasible and bad.threshold == math.inf


def test_nothing_certifiable_defers_everything():
    rng = np.random.default_rng(5)
    conf = rng.random(2000)
    corr = rng.random(2000) < 0.5  # scores carry no information: 50% risk everywhere
    for choice in (S.select_threshold(conf, corr, 0.05, 0.1), S.select_threshold(conf[:30], corr[:30], 0.05, 0.1),
                   S.select_threshold([], [], 0.05, 0.1)):
        assert not choice.feasible and choice.threshold == math.inf and choice.coverage == 0.0
        assert not np.any(conf >= choice.threshold)  # the service defers every frame
        assert math.isnan(choice.empirical_risk) and math.isnan(choice.risk_upper_bound)
        assert choice.method == S.LTT_METHOD


def test_a_fixed_grid_is_walked_from_fixed_starts():
    # Given a grid fixed in advance and scores 0.00 .. 0.99, wrong below 0.2; at alpha 0.2, delta
    # 0.1 and m = 100 two sequences at 0.05 start where a like-sampled grid accepts 14 and 56
    conf = np.arange(100) / 100
    corr = conf >= 0.2
    assert S.sequence_starts(100, 0.2, 0.1) == ([14, 56], 0.05)
    # When the grid is tested from 0.8 (rank ceil(4 * 14 / 100) = 1) and 0.1 (rank 3) down:
    # 0.8 (20 accepted, 0 wrong), 0.4 (60, 0) and 0.1 (90, 10) reject; 0.0 (100, 20) does not
    choice = S.select_threshold(conf, corr, 0.2, 0.1, grid=[0.4, 0.0, 0.8, 0.1])
    assert choice.threshold == 0.1 and choice.coverage == 0.9 and choice.empirical_risk == pytest.approx(1 / 9)
    assert choice.risk_upper_bound == pytest.approx(stats.beta.ppf(0.95, 11, 80), rel=1e-9)
    # A grid point above every score accepts nothing: its sequence stops there, as it must; the
    # second sequence (rank ceil(2 * 56 / 100) = 2: 0.4) still rejects
    assert S.select_threshold(conf, corr, 0.2, 0.1, grid=[2.0, 0.4]).threshold == 0.4
    assert not S.select_threshold(conf, corr, 0.2, 0.1, grid=[2.0]).feasible
    with pytest.raises(ValueError, match="at least one finite threshold"):
        S.select_threshold(conf, corr, 0.2, 0.1, grid=[float("nan")])


def test_sgr_is_still_selectable_and_methods_are_checked():
    rng = np.random.default_rng(3)
    conf = rng.random(1000)
    corr = rng.random(1000) < 0.6 + 0.4 * conf
    sgr = S.select_threshold(conf, corr, 0.1, 0.1, method="sgr")
    assert sgr.method == S.SGR_METHOD == "sgr-clopper-pearson" and sgr.feasible
    assert S.select_threshold(conf, corr, 0.1, 0.1).method == S.LTT_METHOD
    with pytest.raises(ValueError, match=r"threshold method should be one of \['ltt', 'sgr'\], but got 'bonferroni'"):
        S.select_threshold(conf, corr, 0.1, 0.1, method="bonferroni")
    with pytest.raises(ValueError, match="only used by method 'ltt'"):
        S.select_threshold(conf, corr, 0.1, 0.1, method="sgr", grid=[0.5])
    with pytest.raises(ValueError, match="threshold method should be one of"):
        EvalConfig(threshold_method="x")


def test_threshold_method_option_on_calibrate_and_eval():
    from trustvlm.cli import build_parser

    parser = build_parser()
    for command in ("calibrate", "eval"):
        assert parser.parse_args([command]).threshold_method == "ltt"
        assert parser.parse_args([command, "--threshold-method", "sgr"]).threshold_method == "sgr"
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "--threshold-method", "magic"])
    assert isinstance(parser, argparse.ArgumentParser)


def test_bundles_written_before_ltt_still_load():
    # The threshold record of a bundle calibrated with SGR, as bundle.json stored it
    old = {"threshold": 0.686501108909719, "alpha": 0.05, "delta": 0.1, "coverage": 0.8132231404958677,
           "empirical_risk": 0.038109756097560975, "risk_upper_bound": 0.04971872406196503, "n_calibration": 2420,
           "feasible": True, "method": "sgr-clopper-pearson"}
    choice = ThresholdChoice.from_dict(old)
    assert choice.method == S.SGR_METHOD and choice.threshold == old["threshold"]
    assert choice.to_dict() == old


# --------------------------------------------------------------------------- the guarantee


def test_violation_rate_stays_within_delta_on_a_known_population():
    # Given a population with P(wrong | rank u) = 0.6 u^2, so the selective risk of the top c is
    # 0.2 c^2 (5% at c = 0.5), and scores on 40 levels (ties)
    alpha, delta, m, trials, levels = 0.05, 0.1, 600, 400, 40
    rng = np.random.default_rng(2026)

    def true_risk(threshold):
        c = (round((1 - threshold) * levels) + 1) / levels
        return 0.2 * c**2

    violations = naive = 0
    for _ in range(trials):
        u = rng.random(m)
        corr = rng.random(m) >= 0.6 * u**2
        conf = 1 - np.floor(u * levels) / levels
        choice = S.select_threshold(conf, corr, alpha, delta)
        violations += choice.feasible and true_risk(choice.threshold) > alpha
        values = np.unique(conf)[::-1]  # no guarantee: the lowest score with empirical risk <= alpha
        risk = np.array([np.mean(~corr[conf >= v]) for v in values])
        naive += true_risk(values[np.flatnonzero(risk <= alpha)[-1]]) > alpha
    # Then at most delta of the draws violate, up to the binomial sampling margin of `trials` draws
    margin = stats.binom.ppf(0.999, trials, delta) / trials
    assert violations / trials <= margin, f"{violations}/{trials} draws exceed alpha (allowed {margin:.3f})"
    # and the check has teeth: thresholds on empirical risk alone violate far more often
    assert naive / trials > margin
