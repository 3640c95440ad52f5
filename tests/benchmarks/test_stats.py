"""Figures (median with min-max), paired ratios and the timing loop."""

from __future__ import annotations

import math

import pytest

from trustvlm.benchmarks.stats import Figure, percentile, ratio, time_calls

pytestmark = pytest.mark.timeout(30)


def test_figure_summarizes_its_samples():
    figure = Figure((3.0, 1.0, 2.0, 10.0), "images/s")
    assert (figure.median, figure.min, figure.max) == (2.5, 1.0, 10.0)
    assert figure.format() == "2.5 (1.0-10.0)"
    assert Figure((4.25,)).format(2) == "4.25", "one sample prints without a range"


def test_figure_round_trips_through_its_dict():
    figure = Figure((1.5, 2.5), "ms")
    assert Figure.from_dict(figure.to_dict()) == figure


def test_figure_needs_a_sample():
    with pytest.raises(ValueError, match="at least one sample"):
        Figure(())


def test_inverse_turns_seconds_per_batch_into_images_per_second():
    assert Figure((0.5, 2.0), "s").inverse(8, "images/s").samples == (16.0, 4.0)


def test_ratio_is_taken_sample_by_sample():
    assert ratio(Figure((2.0, 6.0)), Figure((1.0, 3.0))).samples == (2.0, 2.0)
    with pytest.raises(ValueError, match="equal sample counts, but got 2 and 1"):
        ratio(Figure((1.0, 2.0)), Figure((1.0,)))


def test_time_calls_runs_warmup_then_repeats_times_calls():
    calls = []
    seconds = time_calls(lambda: calls.append(1), repeats=3, calls_per_sample=4, warmup=2)
    assert len(calls) == 2 + 3 * 4, f"expected 14 calls, got {len(calls)}"
    assert len(seconds.samples) == 3 and seconds.unit == "s"


def test_time_calls_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats and calls_per_sample should be >= 1"):
        time_calls(lambda: None, repeats=0)


def test_percentile_interpolates_and_is_nan_without_values():
    assert percentile([10, 20, 30, 40], 50) == 25.0
    assert math.isnan(percentile([], 99))
