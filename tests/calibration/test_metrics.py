"""Tests of trustvlm.calibration.metrics (selective-prediction metrics).

References: scikit-learn (only for tests), a literal transcription of the official
TrustVLM ``coverage_risk``/``aurc_eaurc`` loop, and brute force over tie orders.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from trustvlm.calibration import metrics as M

# --------------------------------------------------------------------------- references


def official_aurc_eaurc(confidence, correct):
    """Transcription of the official calc_aurc_eaurc (EPFL-IMOS/TrustVLM, TrustVLM.py)."""
    sort_values = sorted(zip(list(confidence), list(correct)), key=lambda x: x[0], reverse=True)
    sort_correctness = [c for _, c in sort_values]
    risk_list = []
    risk = 0
    for i in range(len(sort_correctness)):
        if sort_correctness[i] == 0:
            risk += 1
        risk_list.append(risk / (i + 1))
    r = risk_list[-1]
    area = 0.0
    for rv in risk_list:
        area += rv * (1 / len(risk_list))
    optimal = r + (1 - r) * np.log(1 - r)
    return area, area - optimal


def brute_force_tie_average_aurc(confidence, correct):
    """Mean of the official per-sample AURC over every order of the tied samples."""
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=int)
    values = sorted(set(conf.tolist()), reverse=True)
    groups = [list(corr[conf == v]) for v in values]
    per_group_orders = [sorted(set(itertools.permutations(g))) for g in groups]
    # Distinct orders of a multiset are equally likely under a uniform random order.
    total, count = 0.0, 0
    for combo in itertools.product(*per_group_orders):
        seq = [c for g in combo for c in g]
        errs = np.cumsum(1 - np.asarray(seq))
        total += float(np.mean(errs / np.arange(1, len(seq) + 1)))
        count += 1
    return total / count


def brute_force_risk_coverage(confidence, correct):
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=bool)
    cov, risk, thr = [], [], []
    for t in sorted(set(conf.tolist()), reverse=True):
        acc = conf >= t
        cov.append(acc.mean())
        risk.append(1.0 - corr[acc].mean())
        thr.append(t)
    return np.array(cov), np.array(risk), np.array(thr)


def random_case(rng, n, tied):
    """Scores that are informative about correctness; ``tied``: only 5 distinct values."""
    correct = rng.random(n) < 0.7
    if tied:
        conf = np.clip(np.round(rng.normal(correct * 1.0, 1.0) * 1.5) / 4.0, -0.5, 0.5)
    else:
        conf = rng.normal(correct * 1.0, 1.0)
    if correct.all() or not correct.any():
        correct[0] = not correct[0]
    return conf, correct


CASES = [(seed, n, tied) for seed in range(12) for n, tied in ((7, True), (60, True), (500, False), (500, True), (2, False))]


# --------------------------------------------------------------------------- hand-worked


def test_hand_example_no_ties():
    conf = [0.9, 0.8, 0.7, 0.6]
    corr = [1, 0, 1, 0]
    # Ranked: ok, wrong, ok, wrong. Risk after k accepted: 0/1, 1/2, 1/3, 2/4.
    # AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3 -> 333.33 (x1000).
    assert M.aurc(conf, corr) == pytest.approx(1000 / 3, rel=1e-12)
    assert M.aurc(conf, corr, scale=1.0) == pytest.approx(1 / 3, rel=1e-12)
    # r = 1/2; optimal = 1/2 + 1/2 * ln(1/2) = 0.153426; E-AURC = 1/3 - 0.153426.
    assert M.e_aurc(conf, corr) == pytest.approx(1000 * (1 / 3 - (0.5 + 0.5 * math.log(0.5))), rel=1e-12)
    # Pairs (correct, wrong): (.9,.8) (.9,.6) (.7,.6) ordered right, (.7,.8) wrong -> 3/4.
    assert M.auroc(conf, corr) == 0.75
    # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1). |tpr - .95| is smallest
    # (0.05) first at (.5, 1) -> FPR95 = 0.5.
    assert M.fpr_at_95_tpr(conf, corr) == 0.5
    # PR (recall, precision) by threshold .9 .8 .7 .6: (.5,1) (.5,1/2) (1,2/3) (1,1/2), plus
    # (0,1). Trapezoids over recall: 0->.5 at height 1 -> .5; .5->1 between 1/2 and 2/3
    # -> .5 * 7/12 = 7/24. Total 19/24.
    assert M.aupr_success(conf, corr) == pytest.approx(19 / 24, rel=1e-12)
    # Average precision: .5 * 1 + .5 * 2/3 = 5/6.
    assert M.aupr_success(conf, corr, method="average_precision") == pytest.approx(5 / 6, rel=1e-12)
    # Errors ranked by -conf: .6 (err, P=1, R=.5), .7 (ok), .8 (err, P=2/3, R=1):
    # AP = .5 * 1 + .5 * 2/3 = 5/6.
    assert M.aupr_error(conf, corr) == pytest.approx(5 / 6, rel=1e-12)
    assert M.accuracy(corr) == 0.5
    cov, risk, thr = M.risk_coverage_curve(conf, corr)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])
    np.testing.assert_array_equal(thr, [0.9, 0.8, 0.7, 0.6])


def test_hand_example_ties():
    conf = [0.7, 0.7, 0.7, 0.2]
    corr = [1, 1, 0, 0]
    # One tied block {ok, ok, wrong} at 0.7: accept 3 (risk 1/3) or all 4 (risk 2/4).
    cov, risk, thr = M.risk_coverage_curve(conf, corr)
    np.testing.assert_allclose(cov, [0.75, 1.0])
    np.testing.assert_allclose(risk, [1 / 3, 0.5])
    np.testing.assert_array_equal(thr, [0.7, 0.2])
    # AURC over the 3 orders of the tie (wrong at position 1, 2, 3):
    # [1, 1/2, 1/3, 1/2] [0, 1/2, 1/3, 1/2] [0, 0, 1/3, 1/2] -> sums 7/3, 4/3, 5/6
    # mean sum 3/2 -> AURC = 3/8 = 375 (x1000). Interpolated errors 1/3, 2/3, 1, 2 give
    # risks 1/3, 1/3, 1/3, 1/2: the same 3/2.
    assert M.aurc(conf, corr) == pytest.approx(375.0, rel=1e-12)
    # E-AURC: r = 1/2 -> 375 - 1000 * (0.5 + 0.5 ln 0.5).
    assert M.e_aurc(conf, corr) == pytest.approx(375.0 - 1000 * (0.5 + 0.5 * math.log(0.5)), rel=1e-12)
    # AUROC: correct (.7, .7) vs wrong (.7, .2): ties count 1/2 -> (1/2 + 1 + 1/2 + 1)/4.
    assert M.auroc(conf, corr) == 0.75


# --------------------------------------------------------------------------- AURC


@pytest.mark.parametrize("n", [2, 3, 10, 257, 1000])
def test_aurc_matches_official_loop_without_ties(n):
    rng = np.random.default_rng(n)
    conf = rng.random(n)
    assert len(set(conf.tolist())) == n
    corr = rng.random(n) < 0.6
    ref_aurc, ref_eaurc = official_aurc_eaurc(conf, corr.astype(int))
    assert M.aurc(conf, corr) == pytest.approx(1000 * ref_aurc, rel=1e-12, abs=1e-12)
    if 0 < corr.sum() < n:
        assert M.e_aurc(conf, corr) == pytest.approx(1000 * ref_eaurc, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("seed", range(25))
def test_aurc_with_ties_equals_mean_over_tie_orders(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 9))
    conf = rng.integers(0, 3, n) / 2.0  # 3 levels: heavy ties
    corr = rng.random(n) < 0.5
    expected = brute_force_tie_average_aurc(conf, corr)
    assert M.aurc(conf, corr, scale=1.0) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_aurc_does_not_depend_on_input_order_of_ties():
    rng = np.random.default_rng(7)
    conf = rng.integers(0, 4, 300) / 3.0
    corr = rng.random(300) < 0.6
    base = M.aurc(conf, corr)
    official = set()
    for _ in range(5):
        perm = rng.permutation(300)
        assert M.aurc(conf[perm], corr[perm]) == pytest.approx(base, rel=1e-12)
        official.add(round(official_aurc_eaurc(conf[perm], corr[perm].astype(int))[0], 12))
    # The official loop does depend on it: the test data do have ties that matter.
    assert len(official) > 1


def test_e_aurc_edge_error_rates():
    conf = [0.1, 0.5, 0.9]
    assert M.aurc(conf, [1, 1, 1]) == 0.0
    assert M.e_aurc(conf, [1, 1, 1]) == 0.0  # r = 0: optimal area 0
    assert M.aurc(conf, [0, 0, 0]) == pytest.approx(1000.0)
    assert M.e_aurc(conf, [0, 0, 0]) == pytest.approx(0.0, abs=1e-12)  # r = 1: limit 1


def test_perfect_and_reversed_ranking():
    conf = np.linspace(0, 1, 10)
    corr = conf > 0.45  # the 5 highest are correct
    # Perfect: risks 0 x5 then 1/6, 2/7, 3/8, 4/9, 5/10.
    perfect = (1 / 6 + 2 / 7 + 3 / 8 + 4 / 9 + 5 / 10) / 10
    assert M.aurc(conf, corr, scale=1.0) == pytest.approx(perfect, rel=1e-12)
    assert M.auroc(conf, corr) == 1.0
    assert M.auroc(-conf, corr) == 0.0
    assert M.aurc(-conf, corr, scale=1.0) > 0.5


# --------------------------------------------------------------------------- risk-coverage


@pytest.mark.parametrize("seed,n,tied", CASES)
def test_risk_coverage_curve_matches_brute_force(seed, n, tied):
    rng = np.random.default_rng(seed)
    conf, corr = random_case(rng, n, tied)
    cov, risk, thr = M.risk_coverage_curve(conf, corr)
    bcov, brisk, bthr = brute_force_risk_coverage(conf, corr)
    np.testing.assert_array_equal(thr, bthr)
    np.testing.assert_allclose(cov, bcov, rtol=1e-14)
    np.testing.assert_allclose(risk, brisk, rtol=1e-12, atol=1e-15)
    # Never half a tie: each coverage is exactly the share with conf >= threshold.
    counts = np.round(cov * n).astype(int)
    np.testing.assert_array_equal(counts, [(conf >= t).sum() for t in thr])


def test_risk_coverage_curve_edge_cases():
    cov, risk, thr = M.risk_coverage_curve([], [])
    assert cov.shape == risk.shape == thr.shape == (0,)
    cov, risk, thr = M.risk_coverage_curve([np.inf, np.inf, 1.0, -np.inf], [1, 0, 1, 0])
    np.testing.assert_array_equal(thr, [np.inf, 1.0, -np.inf])
    np.testing.assert_allclose(cov, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.5, 1 / 3, 0.5])


# --------------------------------------------------------------------------- ROC / PR vs sklearn


@pytest.mark.parametrize("seed,n,tied", CASES)
def test_roc_and_pr_metrics_match_sklearn(seed, n, tied):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    conf, corr = random_case(rng, n, tied)
    y = corr.astype(int)
    assert M.auroc(conf, corr) == pytest.approx(skm.roc_auc_score(y, conf), rel=1e-12, abs=1e-14)
    precision, recall, _ = skm.precision_recall_curve(y, conf)
    assert M.aupr_success(conf, corr) == pytest.approx(skm.auc(recall, precision), rel=1e-12, abs=1e-14)
    assert M.aupr_success(conf, corr, method="average_precision") == pytest.approx(
        skm.average_precision_score(y, conf), rel=1e-12, abs=1e-14
    )
    assert M.aupr_error(conf, corr) == pytest.approx(
        skm.average_precision_score(1 - y, -conf), rel=1e-12, abs=1e-14
    )
    precision_e, recall_e, _ = skm.precision_recall_curve(1 - y, -conf)
    assert M.aupr_error(conf, corr, method="trapezoid") == pytest.approx(
        skm.auc(recall_e, precision_e), rel=1e-12, abs=1e-14
    )


@pytest.mark.parametrize("seed,n,tied", CASES)
def test_fpr95_matches_official_sklearn_computation(seed, n, tied):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    conf, corr = random_case(rng, n, tied)
    y = corr.astype(int)
    # Official: fpr, tpr, _ = roc_curve(correct, score); fpr[argmin(|tpr - .95|)].
    fpr, tpr, _ = skm.roc_curve(y, conf)
    assert M.fpr_at_95_tpr(conf, corr) == fpr[np.argmin(np.abs(tpr - 0.95))]
    # Official tnr_in_tpr_95 = 1 - fpr[argmax(tpr >= .95)].
    assert M.fpr_at_95_tpr(conf, corr, rule="first_at_least") == fpr[np.argmax(tpr >= 0.95)]
    fpr_f, tpr_f, _ = skm.roc_curve(y, conf, drop_intermediate=False)
    assert M.fpr_at_95_tpr(conf, corr, drop_intermediate=False) == fpr_f[np.argmin(np.abs(tpr_f - 0.95))]
    assert M.fpr_at_95_tpr(conf, corr, target_tpr=0.8) == fpr[np.argmin(np.abs(tpr - 0.8))]


def test_fpr95_depends_on_dropped_roc_points_like_the_official_code():
    # Ranked labels: 36 correct, 2 wrong, 4 correct, 2 wrong (40 correct, 4 wrong).
    # Full ROC: (fpr, tpr) = (0, .9), (.25, .9), (.5, .9), (.5, .925), (.5, .95), ... so the
    # point nearest TPR .95 is (.5, .95) -> 0.5. roc_curve's default drop_intermediate
    # removes (.25, .9) and (.5, .925/.95/.975); of the kept (0, .9) and (.5, 1.0), TPR .9
    # is nearer in float64 (0.04999.. < 0.05000..) and its first point has FPR 0.
    labels = [1] * 36 + [0] * 2 + [1] * 4 + [0] * 2
    conf = np.linspace(1.0, 0.0, len(labels))
    assert M.fpr_at_95_tpr(conf, labels) == 0.0
    assert M.fpr_at_95_tpr(conf, labels, drop_intermediate=False) == 0.5
    skm = pytest.importorskip("sklearn.metrics")
    fpr, tpr, _ = skm.roc_curve(labels, conf)
    assert fpr[np.argmin(np.abs(tpr - 0.95))] == 0.0


# --------------------------------------------------------------------------- degenerate / invalid


def test_too_few_samples_or_one_class_return_nan():
    ranking = [M.auroc, M.fpr_at_95_tpr, M.aupr_success, M.aupr_error]
    for conf, corr in (([], []), ([0.3], [1]), ([0.3], [0])):
        for fn in ranking + [M.aurc, M.e_aurc]:
            assert math.isnan(fn(conf, corr)), fn.__name__
    for corr in ([1, 1, 1], [0, 0, 0]):
        for fn in ranking:
            assert math.isnan(fn([0.1, 0.2, 0.3], corr)), fn.__name__
        assert not math.isnan(M.aurc([0.1, 0.2, 0.3], corr))
    assert math.isnan(M.accuracy([]))
    assert M.accuracy([True]) == 1.0
    out = M.evaluate_selective([0.5], [1])
    assert out["n"] == 1 and out["accuracy"] == 1.0
    assert all(math.isnan(v) for k, v in out.items() if k not in ("n", "accuracy"))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        M.aurc([0.1, float("nan"), 0.3], [1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.evaluate_selective(np.array([np.nan, 0.2]), [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        M.auroc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="0/1"):
        M.accuracy([0.5, 1.0])
    with pytest.raises(ValueError, match="same length"):
        M.aurc([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match="1-D"):
        M.aurc([[0.1, 0.2]], [[1, 0]])
    with pytest.raises(ValueError, match="numeric"):
        M.aurc(["a", "b"], [1, 0])
    with pytest.raises(ValueError, match="method"):
        M.aupr_success([0.1, 0.2], [1, 0], method="roc")
    with pytest.raises(ValueError, match="rule"):
        M.fpr_at_95_tpr([0.1, 0.2], [1, 0], rule="closest")


def test_evaluate_selective_matches_individual_functions():
    rng = np.random.default_rng(3)
    conf, corr = random_case(rng, 400, tied=True)
    out = M.evaluate_selective(conf, corr)
    assert out == {
        "n": 400,
        "accuracy": M.accuracy(corr),
        "aurc_x1000": M.aurc(conf, corr),
        "e_aurc_x1000": M.e_aurc(conf, corr),
        "auroc": M.auroc(conf, corr),
        "fpr_at_95_tpr": M.fpr_at_95_tpr(conf, corr),
        "aupr_success": M.aupr_success(conf, corr),
        "aupr_error": M.aupr_error(conf, corr),
    }
    assert all(isinstance(v, float) for k, v in out.items() if k != "n")
    assert M.aurc(conf, corr, scale=1.0) * 1000 == pytest.approx(out["aurc_x1000"], rel=1e-12)


def test_e_aurc_is_never_negative():
    # Any ranking's AURC is at least the perfect ranking's discrete AURC, a right-endpoint Riemann
    # sum of an increasing function, hence at least the continuous optimum subtracted by e_aurc.
    rng = np.random.default_rng(7)
    for trial in range(300):
        n = int(rng.integers(2, 60))
        correct = rng.random(n) < rng.random()
        if trial % 3 == 0:
            confidence = np.where(correct, 1.0, 0.0) + rng.random(n) * 0.1  # near-perfect rankings
        elif trial % 3 == 1:
            confidence = rng.integers(0, 3, size=n).astype(float)  # heavy ties
        else:
            confidence = rng.normal(size=n)
        assert M.e_aurc(confidence, correct) >= -1e-9, (n, correct.tolist(), confidence.tolist())
    perfect = np.r_[np.ones(3), np.zeros(1)]
    assert M.e_aurc(perfect, perfect.astype(bool)) > 0  # small n: the discrete optimum sits above the integral
