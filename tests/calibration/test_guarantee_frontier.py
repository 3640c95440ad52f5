"""Tests for trustvlm.calibration.guarantee_frontier: the frontier against brute force, the estimate by simulation."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from trustvlm.calibration.guarantee_frontier import (FRONTIER_ALPHAS, data_guarantee, error_curve, estimate_line,
                                                     frontier_line, guarantee_frontier, sample_size_estimate,
                                                     smallest_certified_alpha)
from trustvlm.calibration.threshold_selection import select_threshold

pytestmark = pytest.mark.timeout(60)

#: Draws per simulated count.
DRAWS = 200


# --------------------------------------------------------------------------- brute force of the procedure


def binomial_cdf(errors: int, n: int, alpha: float) -> float:
    """P(Binomial(n, alpha) <= errors), summed term by term (1 for n = 0)."""
    return sum(math.comb(n, j) * alpha**j * (1 - alpha) ** (n - j) for j in range(errors + 1))


def brute_starts(m: int, alpha: float, delta: float) -> tuple[list[int], float]:
    """K sequences at delta / K, the first starting at the fewest error-free samples that reject, x4 each."""
    for k in itertools.count(1):
        level = delta / k
        n_min = next((n for n in range(1, m + 1) if (1 - alpha) ** n <= level), None)
        if n_min is None:
            return [], level
        starts = [n_min * 4**i for i in range(k + 1) if n_min * 4**i <= m]
        if len(starts) <= k:
            return starts, level


def brute_force(conf: np.ndarray, correct: np.ndarray, alpha: float, delta: float, grid=None) -> dict:
    """Every threshold (distinct score or grid point) from the highest down, fixed sequences from each start."""
    m = len(conf)
    points = sorted(set(conf.tolist() if grid is None else grid.tolist()), reverse=True)
    accepted = [int(np.sum(conf >= t)) for t in points]
    errors = [int(np.sum((conf >= t) & ~correct)) for t in points]
    starts, level = brute_starts(m, alpha, delta)
    if grid is None:
        first = [next(i for i, n in enumerate(accepted) if n >= start) for start in starts]
    else:
        raw = sorted(grid.tolist(), reverse=True)
        targets = [min(m, start + math.ceil(3 * math.sqrt(start))) for start in starts]
        first = [points.index(raw[max(1, min(len(raw), math.ceil(len(raw) * t / m))) - 1]) for t in targets]
    best = -1
    for i in first:
        j = i
        while j < len(points) and accepted[j] > 0 and binomial_cdf(errors[j], accepted[j], alpha) <= level:
            j += 1
        if j > i:  # the start itself was rejected
            best = max(best, j - 1)
    if best < 0:
        return {"alpha": alpha, "coverage": 0.0, "threshold": None}
    return {"alpha": alpha, "coverage": accepted[best] / m, "threshold": points[best]}


def test_the_frontier_equals_a_brute_force_run_of_the_procedure_at_each_alpha():
    rng = np.random.default_rng(7)
    inside = 0
    for case in range(16):
        m = int(rng.integers(60, 500))
        conf = np.round(rng.random(m), 2)  # ties
        correct = rng.random(m) > rng.uniform(0.0, 0.25) * conf[::-1] ** 2 * 2
        grid = np.round(rng.random(int(rng.integers(20, 400))), 3) if case % 2 else None
        delta = (0.05, 0.1, 0.2)[case % 3]
        alphas = (*FRONTIER_ALPHAS, 0.03)
        frontier = guarantee_frontier(conf, correct, delta, alphas=alphas, grid=grid)
        assert [p["alpha"] for p in frontier] == sorted(alphas)
        for point in frontier:
            expected = brute_force(conf, correct, point["alpha"], delta, grid)
            assert point == pytest.approx(expected), (case, point, expected)
            inside += 0 < point["coverage"] < 1
    assert inside >= 10, "the cases must include partial coverages, or equality proves little"


def test_the_frontier_line_reads_each_alpha():
    frontier = [{"alpha": 0.01, "coverage": 0.0, "threshold": None},
                {"alpha": 0.02, "coverage": 0.081, "threshold": 0.9},
                {"alpha": 0.05, "coverage": 0.412, "threshold": 0.7},
                {"alpha": 0.2, "coverage": 1.0, "threshold": 0.1}]
    assert frontier_line(frontier, 0.1, 640) == ("what this data can certify (delta 10%, 640 threshold images): alpha "
                                                 "1% -> nothing, 2% -> 8.1% of images, 5% -> 41%, 20% -> 100%")


# --------------------------------------------------------------------------- the estimate, by simulation


def observed(m: int, rate, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """m labelled images whose error probability `rate(q)` grows with the rank fraction q."""
    rng = np.random.default_rng(seed)
    q = np.sort(rng.random(m))
    return 1 - q, rng.random(m) >= rate(q)


def draw(conf: np.ndarray, correct: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """DRAWS sets of n new images as the estimate assumes: rank fraction q uniform, wrong at the rate at rank q m."""
    _, inverse = np.unique(-conf, return_inverse=True)  # tie blocks, most confident first
    block_rate = np.bincount(inverse, weights=~correct) / np.bincount(inverse)
    rate_at_rank = block_rate[inverse[np.argsort(-conf, kind="mergesort")]]
    q = rng.random((DRAWS, n))
    wrong = rng.random((DRAWS, n)) < rate_at_rank[np.minimum((q * len(conf)).astype(int), len(conf) - 1)]
    return 1 - q, ~wrong


def certify_rate(conf, correct, n: int, alpha: float, seed: int, grid_ratio=None, target: float = 0.0) -> float:
    """The share of the draws of n images on which the procedure certifies alpha at >= target coverage."""
    rng = np.random.default_rng(seed)
    confs, corrects = draw(conf, correct, n, rng)
    hits = 0
    for c, y in zip(confs, corrects):
        grid = None if grid_ratio is None else rng.random(max(1, round(n * grid_ratio)))
        choice = select_threshold(c, y, alpha, 0.1, grid=grid)
        hits += choice.feasible and choice.coverage >= target
    return hits / DRAWS


@pytest.mark.parametrize(("m", "slope", "seed", "grid_ratio", "target"), [
    (240, 0.15, 0, None, 0.0),  # nothing certified on 240: how many would certify at all
    (240, 0.15, 0, 1.0, 0.0),  # the same with calibrate's independent grid (lambda half as large)
    (400, 0.30, 1, None, 0.10),  # how many would certify at >= 10% coverage (the target when little is covered)
])
def test_the_estimate_certifies_in_half_the_draws_and_half_of_it_clearly_less(m, slope, seed, grid_ratio, target):
    conf, correct = observed(m, lambda q: 0.005 + slope * q, seed)
    estimate = sample_size_estimate(conf, correct, 0.05, 0.1, grid_ratio=grid_ratio, target_coverage=target)
    assert estimate.status == "estimated" and estimate.threshold_images > m / 2
    n = estimate.threshold_images
    at_n = certify_rate(conf, correct, n, 0.05, 11, grid_ratio, target)
    at_half = certify_rate(conf, correct, n // 2, 0.05, 12, grid_ratio, target)
    # the rule: certified in at least half of the draws of N; not wildly conservative: N / 2 certifies in at
    # most (share at N) - 0.25 of its draws, and in less than half
    assert at_n >= 0.5, (n, at_n)
    assert at_half <= at_n - 0.25 and at_half < 0.5, (n, at_n, at_half)


def test_an_error_curve_above_alpha_everywhere_is_unreachable_and_the_reachable_alphas_are_said():
    m = 200
    conf = np.linspace(1, 0, m)
    correct = np.arange(m) % 5 != 0  # the most confident is wrong, then every fifth: >= 20% in every top share
    assert error_curve(conf, correct).lowest_rate == pytest.approx(0.2)
    out = data_guarantee(conf, correct, 0.1, 0.1, method="ltt", grid=None, shots=16, lambda_images=0)
    estimate = out["sample_size_estimate"]
    assert estimate["status"] == "unreachable" and estimate["images"] is None
    now = smallest_certified_alpha(conf, correct, 0.1)
    assert estimate["smallest_alpha_now"] == now and 0.2 < now < 0.5
    assert select_threshold(conf, correct, now, 0.1).feasible
    assert not select_threshold(conf, correct, now - 0.001, 0.1).feasible
    line = estimate_line(estimate)
    assert line.startswith("no amount of images like these certifies alpha 10%: the model errs on at least 20% of")
    assert "any alpha above that is reachable with more images" in line and f"certify alpha {100 * now:.0f}%" in line


def test_a_coverage_target_beyond_the_curve_is_unreachable():
    m = 1000
    conf = np.linspace(1, 0, m)
    correct = np.ones(m, bool)
    correct[90::2] = False  # error-free top 9%, then half wrong: below 5% only among the top 9.8%
    out = data_guarantee(conf, correct, 0.05, 0.1, method="ltt", grid=None, shots=0, lambda_images=0)
    asked = next(p for p in out["guarantee_frontier"] if p["alpha"] == 0.05)
    assert asked["threshold"] is not None and asked["coverage"] < 0.1, "certified, on little"
    estimate = out["sample_size_estimate"]
    assert (estimate["status"], estimate["target_coverage"]) == ("unreachable", 0.1)
    assert estimate_line(estimate).startswith("no amount of images like these certifies alpha 5% at >= 10% coverage: "
                                              "their error rate is below 5% only among the most confident 9.8%")


def test_the_estimate_counts_every_labelled_image_and_says_its_assumption():
    conf, correct = observed(240, lambda q: 0.005 + 0.15 * q, 0)
    grid = np.random.default_rng(3).random(240)
    out = data_guarantee(conf, correct, 0.05, 0.1, method="ltt", grid=grid, shots=160, lambda_images=240)
    estimate = out["sample_size_estimate"]
    assert estimate["images"] == 160 + math.ceil(estimate["threshold_images"] * 2)
    assert estimate["images_total_now"] == 640
    assert estimate_line(estimate) == (
        f"about {estimate['images']:,} labelled images of this camera (now 640) would certify alpha 5% at "
        f"~{100 * estimate['coverage']:.2g}% coverage in at least half of such samples (assumes new images err like "
        "these at each confidence rank)")
    assert json.loads(json.dumps(out, allow_nan=False)) == out
