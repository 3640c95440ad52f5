"""Pure helpers of the end-to-end benchmark (the service itself is exercised by `make bench`)."""

from __future__ import annotations

import math
import os
import sys

import pytest

from trustvlm.benchmarks.e2e import burst_rate, read_rss_mib, window_rate

pytestmark = pytest.mark.timeout(30)


def test_burst_rate_counts_frames_after_the_first_burst_over_burst_to_burst_time():
    # Given three batches of 8 decisions arriving 0.5 s apart (each burst spread over 7 ms)
    times = [start + 0.001 * i for start in (10.0, 10.5, 11.0) for i in range(8)]
    # Then the rate is the 16 frames of bursts 2 and 3 over the 1.0 s between the first and last burst
    assert burst_rate(times) == pytest.approx(16.0)


def test_burst_rate_is_nan_with_fewer_than_two_bursts():
    assert math.isnan(burst_rate([]))
    assert math.isnan(burst_rate([1.0, 1.001, 1.002]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_window_rate_is_the_burst_rate_or_the_stream_rate_when_bursts_merge():
    bursts = [0.0, 0.001, 1.0, 1.001, 2.0, 2.001]
    assert window_rate(bursts) == burst_rate(bursts)
    stream = [i * 0.004 for i in range(51)]  # a batch every 4 ms: closer than the burst gap
    assert math.isnan(burst_rate(stream))
    assert window_rate(stream) == pytest.approx(250.0)
    assert math.isnan(window_rate([1.0])) and math.isnan(window_rate([]))


def test_read_rss_mib_reads_this_process_and_nan_for_no_process():
    rss, peak = read_rss_mib(os.getpid())
    assert 0 < rss <= peak, f"RSS {rss} MiB should be positive and at most the peak {peak} MiB"
    assert all(math.isnan(v) for v in read_rss_mib(2**22 + 12345))
