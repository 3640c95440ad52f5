"""Tests of the risk control: the finite-sample bound, thresholds (LTT by default, SGR on request), lambda choice."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from trustvlm.calibration import metrics as M
from trustvlm.calibration import lambda_choice as L
from trustvlm.calibration import risk_bound as B
from trustvlm.calibration import threshold_selection as S
from trustvlm.contract.threshold import ThresholdChoice

# --------------------------------------------------------------------------- helpers


def same_choice(a: ThresholdChoice, b: ThresholdChoice) -> bool:
    """Field-wise equality where NaN equals NaN."""
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y or type(x) is not type(y):
            return False
    return True


def exact_binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k) in exact rational arithmetic (small n only)."""
    q = Fraction(p)
    return float(sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k + 1)))


def synthetic(rng, n):
    """A VLM-like score/correctness relation: MSP-like scores, logistic P(correct | score).

    About 73% accuracy and AUROC ~0.89; P(correct) rises from ~0.03 at score 0.15 through
    0.5 at score 0.5 to ~0.99 at score 1.
    """
    s = rng.beta(3.0, 1.5, n)
    p = 1.0 / (1.0 + np.exp(-10.0 * (s - 0.5)))
    return s, rng.random(n) < p, p


def naive_threshold(conf, corr, alpha):
    """Largest coverage whose *empirical* calibration risk is <= alpha (no guarantee)."""
    cov, risk, thr = M.risk_coverage_curve(conf, corr)
    ok = np.flatnonzero(risk <= alpha)
    return thr[ok[-1]] if ok.size else math.inf


# --------------------------------------------------------------------------- binomial bound


def test_binomial_upper_bound_closed_forms():
    # k = 0: (1 - p)^n = delta  ->  p = 1 - delta^(1/n).
    for n in (1, 7, 100, 5000):
        for delta in (1e-9, 0.01, 0.1, 0.9):
            assert B.binomial_upper_bound(0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-10)
    # k = n or n = 0: no information beyond 1.
    assert B.binomial_upper_bound(5, 5, 0.1) == 1.0
    assert B.binomial_upper_bound(0, 0, 0.1) == 1.0
    # n = 2, k = 1: P(X <= 1) = 1 - p^2 = delta  ->  p = sqrt(1 - delta).
    assert B.binomial_upper_bound(1, 2, 0.19) == pytest.approx(0.9, rel=1e-12)


@pytest.mark.parametrize("k,n", [(1, 3), (2, 10), (5, 20), (13, 40), (39, 40)])
@pytest.mark.parametrize("delta", [0.001, 0.05, 0.5])
def test_binomial_upper_bound_inverts_the_exact_tail(k, n, delta):
    u = B.binomial_upper_bound(k, n, delta)
    assert k / n <= u <= 1
    assert exact_binom_cdf(k, n, u * (1 - 1e-9)) >= delta > exact_binom_cdf(k, n, min(u * (1 + 1e-9), 1.0))


def test_binomial_upper_bound_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 5, 37, 100, 1500, 5000):
        for k in sorted({0, 1, n // 10, n // 3, n - 1} - {n}):
            for delta in (1e-6, 0.01, 0.0091, 0.1, 0.5, 0.95):
                ref = stats.beta.ppf(1 - delta, k + 1, n - k)
                assert B.binomial_upper_bound(k, n, delta) == pytest.approx(ref, rel=1e-9), (k, n, delta)
    for k, n, p in ((30, 100, 0.2), (30, 100, 0.5), (0, 10, 0.3), (700, 1000, 0.75)):
        assert B._binom_log_cdf(k, n, [p])[0] == pytest.approx(stats.binom.logcdf(k, n, p), rel=1e-11)


def test_binomial_upper_bound_rejects_bad_input():
    with pytest.raises(ValueError, match=r"delta should be in \(0, 1\)"):
        B.binomial_upper_bound(1, 10, 1.0)
    with pytest.raises(ValueError, match="errors <= n"):
        B.binomial_upper_bound(11, 10, 0.1)


# --------------------------------------------------------------------------- select_threshold


def reference_sgr(conf, corr, alpha, delta, bound):
    """Paper's Algorithm 1, written out plainly, returning the best tested feasible threshold."""
    m = len(conf)
    s = np.sort(conf)
    k = max(1, math.ceil(math.log2(m)))
    zmin, zmax = 1, m
    feasible = []
    for _ in range(k):
        z = math.ceil((zmin + zmax) / 2)
        theta = s[z - 1]
        acc = conf >= theta
        e = int((~corr[acc]).sum())
        b = bound(e, int(acc.sum()), delta / k)
        if b < alpha:
            zmax = z
            feasible.append((acc.mean(), theta, e / acc.sum(), b))
        else:
            zmin = z
    return max(feasible) if feasible else None


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_select_threshold_follows_sgr(seed, tied):
    rng = np.random.default_rng(seed)
    conf, corr, _ = synthetic(rng, 700)
    if tied:
        conf = np.round(conf * 20) / 20
    try:
        from scipy import stats

        def bound(e, n, d):
            return 1.0 if e == n else float(stats.beta.ppf(1 - d, e + 1, n - e))
    except ImportError:
        bound = B.binomial_upper_bound
    alpha, delta = 0.1, 0.05
    ch = S.select_threshold(conf, corr, alpha, delta, method="sgr")
    ref = reference_sgr(conf, corr, alpha, delta, bound)
    assert ch.feasible and ref is not None
    cov, theta, risk, b = ref
    assert ch.threshold == theta
    assert ch.coverage == pytest.approx(cov, rel=1e-15)
    assert ch.empirical_risk == pytest.approx(risk, rel=1e-12)
    assert ch.risk_upper_bound == pytest.approx(b, rel=1e-9)
    # Internal consistency with the accept rule.
    acc = conf >= ch.threshold
    assert ch.coverage == acc.mean()
    assert ch.empirical_risk == pytest.approx(1 - corr[acc].mean(), rel=1e-12)
    assert ch.empirical_risk <= ch.risk_upper_bound < alpha
    assert (ch.alpha, ch.delta, ch.n_calibration, ch.method) == (alpha, delta, 700, S.SGR_METHOD)


def test_select_threshold_separable_data():
    # 1000 samples, correct iff score > 0.3: SGR should accept ~all of the 70% correct.
    conf = np.linspace(0.0, 1.0, 1000)
    corr = conf > 0.3
    ch = S.select_threshold(conf, corr, alpha=0.05, delta=0.05)
    assert ch.feasible
    assert 0.65 <= ch.coverage <= 0.75
    assert ch.empirical_risk < 0.05


def test_select_threshold_all_tied():
    conf = np.full(1000, 0.5)
    corr = np.arange(1000) >= 10  # 99% correct: the single block is safe at alpha 5%
    ch = S.select_threshold(conf, corr, alpha=0.05, delta=0.1)
    assert ch.feasible and ch.threshold == 0.5 and ch.coverage == 1.0
    assert ch.empirical_risk == pytest.approx(0.01)
    bad = S.select_threshold(conf, np.arange(1000) >= 200, alpha=0.05, delta=0.1)
    assert not bad.feasible and bad.threshold == math.inf  # no half of a tie is accepted


def test_infeasible_returns_defer_everything():
    rng = np.random.default_rng(5)
    conf = rng.random(2000)
    corr = rng.random(2000) < 0.5  # scores carry no information: risk 50% everywhere
    ch = S.select_threshold(conf, corr, alpha=0.01, delta=0.1)
    assert ch.feasible is False
    assert ch.threshold == math.inf
    assert not np.any(conf >= ch.threshold)
    assert ch.coverage == 0.0
    assert math.isnan(ch.empirical_risk) and math.isnan(ch.risk_upper_bound)
    assert ch.n_calibration == 2000
    all_wrong = S.select_threshold(conf[:50], np.zeros(50, bool), alpha=0.5, delta=0.5)
    assert not all_wrong.feasible and all_wrong.threshold == math.inf
    empty = S.select_threshold([], [], alpha=0.1, delta=0.1)
    assert not empty.feasible and empty.threshold == math.inf and empty.n_calibration == 0


@pytest.mark.parametrize("name", ["alpha", "delta"])
@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_select_threshold_validates_alpha_delta(name, bad):
    kwargs = {"alpha": 0.1, "delta": 0.1, name: bad}
    with pytest.raises(ValueError, match=rf"{name} should be in \(0, 1\), but got "):
        S.select_threshold([0.1, 0.9], [0, 1], **kwargs)


def test_select_threshold_validates_scores():
    with pytest.raises(ValueError, match="NaN"):
        S.select_threshold([0.1, float("nan")], [0, 1], 0.1, 0.1)
    with pytest.raises(ValueError, match="finite"):
        S.select_threshold([0.1, float("inf")], [0, 1], 0.1, 0.1)
    with pytest.raises(ValueError, match="same length"):
        S.select_threshold([0.1, 0.2], [0, 1, 1], 0.1, 0.1)


# --------------------------------------------------------------------------- the guarantee


ALPHA, DELTA, N_SPLITS = 0.1, 0.1, 200
# Allowed share of violating splits: delta plus 3 binomial standard deviations.
SLACK = DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / N_SPLITS)


def test_guarantee_over_random_calibration_test_splits():
    rng = np.random.default_rng(2024)
    conf, corr, _ = synthetic(rng, 3000)
    assert 0.65 < corr.mean() < 0.8
    sgr_viol, naive_viol, coverages = 0, 0, []
    for _ in range(N_SPLITS):
        perm = rng.permutation(3000)
        cal, test = perm[:1500], perm[1500:]
        ch = S.select_threshold(conf[cal], corr[cal], ALPHA, DELTA)
        acc = conf[test] >= ch.threshold
        coverages.append(acc.mean())
        if acc.any() and 1 - corr[test][acc].mean() > ALPHA:
            sgr_viol += 1
        acc_naive = conf[test] >= naive_threshold(conf[cal], corr[cal], ALPHA)
        if acc_naive.any() and 1 - corr[test][acc_naive].mean() > ALPHA:
            naive_viol += 1
    assert sgr_viol / N_SPLITS <= SLACK
    # The check has power: thresholding on empirical risk alone violates far more often.
    assert naive_viol / N_SPLITS > SLACK
    # And SGR is not vacuous: it accepts a real share of predictions.
    assert np.mean(coverages) > 0.3


def test_guarantee_on_population_risk():
    # Fresh calibration draws; the true selective risk of each threshold is computed from
    # the known P(correct | score) on a large reference sample of scores.
    rng = np.random.default_rng(77)
    ref_s, _, ref_p = synthetic(rng, 400_000)
    order = np.argsort(ref_s)
    ref_s, ref_err = ref_s[order], (1 - ref_p[order])
    err_from = np.r_[np.cumsum(ref_err[::-1])[::-1], 0.0]

    def true_risk(theta):
        i = np.searchsorted(ref_s, theta, side="left")
        return err_from[i] / (len(ref_s) - i) if i < len(ref_s) else 0.0

    viol = 0
    for _ in range(N_SPLITS):
        conf, corr, _ = synthetic(rng, 1500)
        ch = S.select_threshold(conf, corr, ALPHA, DELTA)
        if ch.feasible and true_risk(ch.threshold) > ALPHA:
            viol += 1
    assert viol / N_SPLITS <= SLACK


# --------------------------------------------------------------------------- serialization


def test_to_dict_from_dict_round_trip():
    rng = np.random.default_rng(1)
    conf, corr, _ = synthetic(rng, 500)
    feasible = S.select_threshold(conf, corr, 0.2, 0.1)
    infeasible = S.select_threshold(conf, corr, 0.001, 0.1)
    assert feasible.feasible and not infeasible.feasible
    for ch in (feasible, infeasible):
        d = ch.to_dict()
        text = json.dumps(d, allow_nan=False)  # strict JSON: inf/nan are encoded
        back = ThresholdChoice.from_dict(json.loads(text))
        assert same_choice(back, ch)
        assert ThresholdChoice.from_dict(d).to_dict() == d
    assert feasible == ThresholdChoice.from_dict(json.loads(json.dumps(feasible.to_dict())))
    assert infeasible.to_dict()["threshold"] == "inf"
    assert infeasible.to_dict()["empirical_risk"] == "nan"


def test_from_dict_rejects_bad_dicts():
    d = S.select_threshold(np.linspace(0, 1, 100), np.linspace(0, 1, 100) > 0.2, 0.2, 0.1).to_dict()
    with pytest.raises(ValueError, match="missing"):
        ThresholdChoice.from_dict({k: v for k, v in d.items() if k != "alpha"})
    with pytest.raises(ValueError, match="unknown"):
        ThresholdChoice.from_dict({**d, "extra": 1})
    with pytest.raises(ValueError, match="feasible"):
        ThresholdChoice.from_dict({**d, "feasible": "yes"})
    with pytest.raises(ValueError, match="threshold"):
        ThresholdChoice.from_dict({**d, "threshold": "high"})


# --------------------------------------------------------------------------- choose_lambda


def test_choose_lambda_picks_informative_prototype_term():
    rng = np.random.default_rng(3)
    n = 2000
    quality = rng.normal(size=n)  # latent: drives correctness
    corr = rng.random(n) < 1 / (1 + np.exp(-2 * quality))
    msp = np.clip(0.6 + 0.05 * quality + 0.15 * rng.normal(size=n), 0, 1)  # weak signal
    sim = 0.5 + 0.1 * quality + 0.02 * rng.normal(size=n)  # strong signal
    lam, table = L.choose_lambda(msp, sim, corr)
    assert [row["lambda"] for row in table] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    by_lam = {row["lambda"]: row["aurc_x1000"] for row in table}
    assert by_lam[0.0] == pytest.approx(M.aurc(msp, corr), rel=1e-12)
    assert by_lam[2.0] == pytest.approx(M.aurc(msp + 2.0 * sim, corr), rel=1e-12)
    assert lam > 0
    assert by_lam[lam] == min(by_lam.values())
    assert by_lam[lam] < by_lam[0.0]


def test_choose_lambda_keeps_msp_when_prototype_term_hurts():
    rng = np.random.default_rng(4)
    n = 1500
    quality = rng.normal(size=n)
    corr = rng.random(n) < 1 / (1 + np.exp(-2 * quality))
    msp = 0.6 + 0.1 * quality
    sim = -0.1 * quality + 0.05 * rng.normal(size=n)  # anti-informative
    lam, table = L.choose_lambda(msp, sim, corr, lambdas=(0.5, 1.0))  # 0 is added
    assert lam == 0.0
    assert [row["lambda"] for row in table] == [0.0, 0.5, 1.0]


def test_choose_lambda_ties_go_to_the_smaller_lambda():
    # MSP is constant (no ranking), sim is informative: every lambda > 0 gives the same
    # ranking, hence the same AURC, all better than lambda 0. Values are exact in binary.
    rng = np.random.default_rng(6)
    n = 64
    sim = rng.permutation(n) / 64.0
    corr = rng.random(n) < sim
    msp = np.full(n, 0.5)
    lam, table = L.choose_lambda(msp, sim, corr)
    aurcs = [row["aurc_x1000"] for row in table]
    assert len(set(aurcs[1:])) == 1 and aurcs[1] < aurcs[0]
    assert lam == 0.25


def test_choose_lambda_validates():
    with pytest.raises(ValueError, match="at least 2"):
        L.choose_lambda([0.5], [0.1], [1])
    with pytest.raises(ValueError, match="lambdas"):
        L.choose_lambda([0.5, 0.6], [0.1, 0.2], [1, 0], lambdas=(0, -1))
    with pytest.raises(ValueError, match="NaN"):
        L.choose_lambda([0.5, 0.6], [0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        L.choose_lambda([0.5, 0.6], [0.1, 0.2, 0.3], [1, 0])


# --------------------------------------------------------------------------- TrustVLM*


def test_trustvlm_star_scores_by_hand():
    probs = np.array([[0.6, 0.4], [0.55, 0.45]])
    sim = np.array([[0.0, 0.0], [0.1, 0.9]])
    # Row 0: softmax(sim / T) = (.5, .5); q = (.6 + .5 lam, .4 + .5 lam) -> pred 0,
    #   conf = .6 + .5 * 1 + 1 * 0 = 1.1 at lam = 1.
    # Row 1 at T = 0.1: softmax((1, 9)) = (1/(1+e^8), e^8/(1+e^8)) ~ (.000335, .999665);
    #   q ~ (.550335, 1.449665) -> pred 1, conf = 1.449665 + 0.9 = 2.349665.
    pred, conf = L.trustvlm_star_scores(probs, sim, lam=1.0, temperature=0.1)
    np.testing.assert_array_equal(pred, [0, 1])
    w = math.exp(8) / (1 + math.exp(8))
    np.testing.assert_allclose(conf, [1.1, 0.45 + w + 0.9], rtol=1e-12)
    pred0, conf0 = L.trustvlm_star_scores(probs, sim, lam=0.0, temperature=0.1)
    np.testing.assert_array_equal(pred0, [0, 0])
    np.testing.assert_allclose(conf0, [0.6, 0.55])


def _star_data(rng, n=800, c=8, proto_strength=6.0):
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * 1.5
    logits[np.arange(n), labels] += rng.normal(1.2, 1.5, n)  # ~55-65% VLM accuracy
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    sim = 0.3 + 0.05 * rng.normal(size=(n, c))
    sim[np.arange(n), labels] += 0.05 * proto_strength * rng.random(n)
    return probs, sim, labels


def test_choose_lambda_temperature_uses_informative_prototypes():
    rng = np.random.default_rng(11)
    probs, sim, labels = _star_data(rng)
    lam, t, table = L.choose_lambda_temperature(probs, sim, labels, temperatures=(0.01, 0.1, 1.0))
    assert len(table) == 6 * 3
    msp_row = [r for r in table if r["lambda"] == 0.0]
    msp_corr = probs.argmax(1) == labels
    for r in msp_row:  # lambda 0: the VLM itself, whatever the temperature
        assert r["aurc_x1000"] == pytest.approx(M.aurc(probs.max(1), msp_corr), rel=1e-12)
        assert r["accuracy"] == pytest.approx(msp_corr.mean())
    best = min(r["aurc_x1000"] for r in table)
    chosen = [r for r in table if r["lambda"] == lam and r["temperature"] == t][0]
    assert chosen["aurc_x1000"] == best
    assert lam > 0 and best < msp_row[0]["aurc_x1000"]
    pred, conf = L.trustvlm_star_scores(probs, sim, lam, t)
    assert chosen["aurc_x1000"] == pytest.approx(M.aurc(conf, pred == labels), rel=1e-12)


def test_choose_lambda_temperature_ties_keep_msp():
    # Constant prototype similarity: softmax is uniform, q = p + lam / C keeps the
    # prediction and shifts every confidence by the same exact amount (binary fractions),
    # so all pairs tie and (lambda 0, smallest temperature) is returned.
    rng = np.random.default_rng(12)
    n, c = 200, 4
    raw = rng.integers(1, 64, size=(n, c)).astype(float)
    probs = raw / 256.0  # exact binary fractions; need not sum to 1 for this check
    sim = np.full((n, c), 0.25)
    labels = rng.integers(0, c, n)
    lam, t, table = L.choose_lambda_temperature(probs, sim, labels, temperatures=(0.5, 0.125))
    assert len({r["aurc_x1000"] for r in table}) == 1
    assert (lam, t) == (0.0, 0.125)


def test_choose_lambda_temperature_validates():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        L.choose_lambda_temperature(probs, probs, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="temperatures"):
        L.choose_lambda_temperature(probs, probs, np.array([0, 1, 1]), temperatures=(0.0,))
    with pytest.raises(ValueError, match="shape"):
        L.choose_lambda_temperature(probs, probs[:, :1], np.array([0, 1, 1]))
