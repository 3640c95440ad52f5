"""The label-free drift monitor: its binomial bound, its bets, its false alarms, its alarms, its state."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from trustvlm.runtime.monitor.binomial import binomial_log_cdf, binomial_upper
from trustvlm.runtime.monitor.drift import DriftConfig, DriftDetector, MonitorState, first_crossings

MONITOR = Path(__file__).resolve().parents[2] / "runtime" / "monitor"


def reference(rng, n=1000, names=("score", "typicality")):
    return {name: rng.normal(size=n) for name in names}


def predicted_frames_to_alarm(gains: list[float], alarm_level: float) -> int:
    """Frames until the mean of the Shiryaev-Roberts detectors reaches the line when every frame hits every bet."""
    r = [0.0] * len(gains)
    for frames in range(1, 10_000):
        r = [(1.0 + v) * g for v, g in zip(r, gains)]
        if sum(r) / len(r) >= alarm_level:
            return frames
    raise AssertionError("never")


def test_the_binomial_bound_is_the_clopper_pearson_beta_quantile():
    worst = 0.0
    for n in (20, 37, 200, 1000, 20_000):
        for b in sorted({1, 2, 3, 7, n // 10, n // 2, n - 1, n}):
            for d in (1e-5, 1e-3, 0.002, 0.05, 0.5, 0.9):
                expected = stats.beta.ppf(1 - d, b, n + 1 - b)
                worst = max(worst, abs(binomial_upper(b - 1, n, d) - expected) / expected)
    assert worst < 1e-9
    assert binomial_upper(5, 5, 0.1) == 1.0
    for k, n, q in ((0, 10, 0.3), (3, 50, 0.02), (400, 1000, 0.45), (999, 1000, 0.999)):
        assert binomial_log_cdf(k, n, q) == pytest.approx(stats.binom.logcdf(k, n, q), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k, n, d", [(-1, 10, 0.1), (11, 10, 0.1), (1, 0, 0.1), (1, 10, 0.0), (1, 10, 1.0),
                                     (1.5, 10, 0.1)])
def test_the_binomial_bound_refuses_bad_arguments(k, n, d):
    with pytest.raises(ValueError):
        binomial_upper(k, n, d)


def test_the_bets_are_the_buckets_of_the_fractions_with_bonferroni_bounds():
    rng = np.random.default_rng(0)
    detector = DriftDetector({"score": rng.normal(size=1000), "typicality": rng.normal(size=20)})
    buckets = [(bet.statistic, bet.bucket) for bet in detector.bets]
    # 0.005 and 0.02 of 20 round to 0 -> 1 and 0 -> 1: deduplicated
    assert buckets == [("score", 5), ("score", 20), ("score", 100), ("score", 300), ("score", 500),
                       ("typicality", 1), ("typicality", 2), ("typicality", 6), ("typicality", 10)]
    d = 0.01 / len(buckets)
    for bet in detector.bets:
        n = detector.reference[bet.statistic].size
        assert bet.bound == pytest.approx(stats.beta.ppf(1 - d, bet.bucket, n + 1 - bet.bucket), rel=1e-9)
        assert bet.threshold == np.sort(detector.reference[bet.statistic])[bet.bucket - 1]
        assert bet.gain == pytest.approx(0.5 + 0.5 / bet.bound)


def test_a_frame_hits_with_the_probability_its_rank_says_even_with_ties():
    # Given many references of 20 values with heavy ties (integers 0..3) and one frame from the same law each
    rng = np.random.default_rng(1)
    config = DriftConfig(bucket_fractions=(0.05, 0.25, 0.5))
    trials = 3000
    hits = np.zeros(3)
    for k in range(trials):
        detector = DriftDetector({"s": rng.integers(0, 4, 20).astype(float)}, config, seed=k)
        detector.update({"s": float(rng.integers(0, 4))})
        hits += np.array(detector.to_dict()["r"]) > 1.0
    # Then a bet of bucket b hits with probability b / (n + 1), as the rank of an exchangeable frame says
    for rate, b in zip(hits / trials, (1, 5, 10)):
        p = b / 21
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / trials), (b, rate, p)


def test_a_camera_like_its_calibration_raises_false_alarms_at_most_at_the_stated_rate():
    # Given small levels, so that the bounds T / level are testable, and many references and streams of one law
    config = DriftConfig(alarm_level=200.0, watch_level=50.0)
    rng = np.random.default_rng(2)
    frames, references, streams = 10, 100, 200
    alarms = watches = 0
    for _ in range(references):
        detector = DriftDetector({"score": rng.random(50), "typicality": rng.random(50)}, config)
        rows = {"score": rng.random((streams, frames)), "typicality": rng.random((streams, frames))}
        alarms += int((first_crossings(detector, rows) >= 0).sum())
        watches += int((first_crossings(detector, rows, level=config.watch_level) >= 0).sum())
    total = references * streams
    for seen, bound in ((alarms, frames / config.alarm_level + 0.01), (watches, frames / config.watch_level + 0.01)):
        assert seen / total <= bound + 3 * math.sqrt(bound * (1 - bound) / total), (seen / total, bound)


def test_a_severe_shift_alarms_after_the_frames_the_bets_predict():
    rng = np.random.default_rng(3)
    ref = reference(rng)
    detector = DriftDetector(ref, seed=0)
    # The bounds from scipy, the gains from them: every frame far below the reference hits every bet
    d = 0.01 / 10
    gains = [0.5 + 0.5 / stats.beta.ppf(1 - d, b, 1001 - b) for _ in ref for b in (5, 20, 100, 300, 500)]
    expected = predicted_frames_to_alarm(gains, 604_800 / 0.05)
    assert expected <= 8
    while detector.update({"score": -50.0, "typicality": -50.0}) is not MonitorState.ALARM:
        assert detector.frames < 100
    assert detector.frames_to_alarm == expected
    # A non-finite value is as suspicious (fail safe); one statistic alone takes about as long (its share)
    nan = DriftDetector(ref)
    while nan.update({"score": math.nan, "typicality": math.inf}) is not MonitorState.ALARM:
        pass
    assert nan.frames_to_alarm == expected
    alone = DriftDetector(ref, seed=1)
    while alone.update({"score": float(rng.normal()), "typicality": -50.0}) is not MonitorState.ALARM:
        assert alone.frames < 100
    assert expected <= alone.frames_to_alarm <= predicted_frames_to_alarm(gains[5:] + [0.5] * 5, 604_800 / 0.05)


def test_a_one_sd_shift_alarms_in_every_replicate_near_the_predicted_time():
    rng = np.random.default_rng(4)
    detector = DriftDetector(reference(rng))
    replicates, frames = 400, 1000
    streams = {"score": rng.normal(size=(replicates, frames)),
               "typicality": rng.normal(-1.0, 1.0, (replicates, frames))}
    first = first_crossings(detector, streams, seed=0)
    assert (first >= 0).all()
    # The best bet's expected log growth per frame predicts the time to reach J * alarm_level
    growth = max(p * math.log(bet.gain) + (1 - p) * math.log(0.5) for bet in detector.bets
                 if bet.statistic == "typicality" for p in [stats.norm.cdf(bet.threshold + 1.0)])
    predicted = math.log(len(detector.bets) * 604_800 / 0.05) / growth
    assert 0.5 * predicted <= np.median(first + 1) <= 1.2 * predicted, (np.median(first + 1), predicted)


def test_missing_values_skip_and_unknown_names_are_ignored():
    rng = np.random.default_rng(5)
    detector = DriftDetector(reference(rng), seed=0)
    detector.update({"score": 0.1, "typicality": -0.2})
    before = detector.to_dict()["r"]
    detector.update({"score": None, "camera_mood": -9.0})
    after = detector.to_dict()["r"]
    assert after[5:] == before[5:]  # typicality absent: its bets untouched
    assert after[:5] == before[:5]  # score None: skipped
    assert detector.frames == 2 and detector.state is MonitorState.OK
    detector.update({"typicality": 0.0})
    assert detector.to_dict()["r"][:5] == before[:5] and detector.to_dict()["r"][5:] != before[5:]


def test_watch_clears_alarm_latches_and_reset_starts_afresh():
    rng = np.random.default_rng(6)
    detector = DriftDetector(reference(rng), DriftConfig(alarm_level=1e6, watch_level=100.0))
    while detector.update({"score": -2.5}) is not MonitorState.WATCH:  # the bucket of 20 and above hit
        assert detector.frames < 10
    assert detector.evidence < 0
    while detector.update({"score": 3.0}) is not MonitorState.OK:
        assert detector.frames < 200
    while detector.update({"score": -9.0}) is not MonitorState.ALARM:
        assert detector.evidence < 0
    alarm_at = detector.frames_to_alarm
    assert alarm_at == detector.frames and detector.evidence >= 0
    for _ in range(100):
        assert detector.update({"score": 3.0}) is MonitorState.ALARM
    assert detector.frames_to_alarm == alarm_at and detector.evidence < 0
    detector.reset()
    assert (detector.state, detector.frames, detector.frames_to_alarm) == (MonitorState.OK, 0, None)
    assert detector.evidence == -math.log10(1e6)


def test_a_restored_state_goes_on_like_the_uninterrupted_detector():
    rng = np.random.default_rng(7)
    ref = reference(rng)
    values = rng.normal(-1.0, 1.0, size=(300, 2))
    config = DriftConfig(alarm_level=1e5, watch_level=1e3)
    whole, first_half = DriftDetector(ref, config, seed=1), DriftDetector(ref, config, seed=2)
    for score, typicality in values[:30]:
        whole.update({"score": score, "typicality": typicality})
        first_half.update({"score": score, "typicality": typicality})
    restored = DriftDetector.from_dict(json.loads(json.dumps(first_half.to_dict())), ref, config, seed=3)
    assert restored.to_dict() == whole.to_dict() and restored.state is whole.state
    for score, typicality in values[30:]:
        row = {"score": score, "typicality": typicality}
        assert restored.update(row) is whole.update(row)
        assert restored.evidence == whole.evidence
    assert restored.to_dict() == whole.to_dict() and whole.frames_to_alarm > 30


def test_a_state_for_another_reference_or_config_or_a_malformed_one_is_refused():
    rng = np.random.default_rng(8)
    ref = reference(rng)
    state = DriftDetector(ref).to_dict()
    other = {name: values.copy() for name, values in ref.items()}
    other["score"][17] += 1e-9
    for args in ((other, DriftConfig()), (ref, DriftConfig(weight=0.4)), (ref, DriftConfig(alarm_level=1e7))):
        with pytest.raises(ValueError, match="another reference or config"):
            DriftDetector.from_dict(state, *args)
    # The order of the reference values does not matter
    shuffled = {name: rng.permutation(values) for name, values in ref.items()}
    assert DriftDetector.from_dict(state, shuffled).to_dict() == state
    for broken in ({**state, "r": state["r"][:-1]}, {**state, "frames": -1}, {**state, "r": [-1.0] * 10},
                   {**state, "frames_to_alarm": 3}, {k: v for k, v in state.items() if k != "frames"}):
        with pytest.raises(ValueError):
            DriftDetector.from_dict(broken, ref)


def test_update_many_is_update_row_by_row_with_ties_gaps_and_non_finite_values():
    rng = np.random.default_rng(9)
    ref = {"score": rng.integers(0, 30, 200).astype(float), "typicality": rng.normal(size=100)}
    frames = 400
    score = rng.integers(0, 30, frames).astype(float) - 40.0 * (np.arange(frames) > 300)  # ties, then a drop
    typicality = [None if i % 7 == 0 else (math.nan if i % 11 == 0 else float(v))
                  for i, v in enumerate(rng.normal(size=frames))]
    config = DriftConfig(alarm_level=1e4, watch_level=10.0)
    one, many = DriftDetector(ref, config, seed=5), DriftDetector(ref, config, seed=5)
    states = [one.update({"score": s, "typicality": t}) for s, t in zip(score, typicality)]
    for start in range(0, frames, 97):
        state = many.update_many({"score": score[start:start + 97], "typicality": typicality[start:start + 97]})
        assert state is states[min(frames, start + 97) - 1]
        assert many.frames == min(frames, start + 97)
    assert many.to_dict() == one.to_dict() and one.frames_to_alarm is not None
    with pytest.raises(ValueError, match="equal lengths"):
        many.update_many({"score": [1.0, 2.0], "typicality": [1.0]})


def test_first_crossings_are_the_detectors_alarms():
    rng = np.random.default_rng(10)
    ref = reference(rng, n=300)
    config = DriftConfig(alarm_level=1e4, watch_level=1e2)
    detector = DriftDetector(ref, config)
    streams = {"score": rng.normal(-0.5, 1.0, (12, 300)), "typicality": rng.normal(size=(12, 300))}
    for level, first in ((None, first_crossings(detector, streams, chunk=64)),
                         (100.0, first_crossings(detector, streams, level=100.0))):
        for i in range(12):
            single = DriftDetector(ref, DriftConfig(alarm_level=level or 1e4, watch_level=level or 1e2))
            single.update_many({name: rows[i] for name, rows in streams.items()})
            assert first[i] + 1 == (single.frames_to_alarm or 0)


@pytest.mark.parametrize("ref, match", [({}, "at least one"), ({"s": np.zeros(19)}, "at least 20"),
                                        ({"s": np.r_[np.zeros(30), np.nan]}, "non-finite"),
                                        ({"s": np.zeros((30, 2))}, "1-D")])
def test_a_bad_reference_is_refused(ref, match):
    with pytest.raises(ValueError, match=match):
        DriftDetector(ref)


@pytest.mark.parametrize("field, value", [("alarm_level", 0.0), ("alarm_level", math.inf), ("watch_level", 2e7),
                                          ("bucket_fractions", ()), ("bucket_fractions", (0.0,)), ("weight", 1.0),
                                          ("reference_delta", 0.0)])
def test_a_bad_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        DriftConfig(**{field: value})


def test_the_guarantee_is_stated_in_one_line():
    detector = DriftDetector(reference(np.random.default_rng(11)))
    assert detector.guarantee() == ("a camera like its calibration raises a false ALARM within 604,800 thinned "
                                    "frames (a week at 1 per second) with probability <= 5% + 1% (the reference draw)")
    assert "86,400 thinned frames (a day" in detector.guarantee(86_400) and "0.714%" in detector.guarantee(86_400)


def test_the_monitors_import_numpy_and_the_standard_library_only():
    allowed = {"numpy", "trustvlm", "__future__", "hashlib", "json", "math", "random", "dataclasses", "enum",
               "typing", "functools"}
    for path in (MONITOR / name for name in ("__init__.py", "binomial.py", "drift.py", "audit.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                assert name.split(".")[0] in allowed, (path.name, name)
                assert not name.startswith("trustvlm.") or name.startswith("trustvlm.runtime.monitor"), name
