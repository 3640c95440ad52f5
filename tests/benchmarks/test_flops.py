"""FLOP counting checked against counts worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustvlm.benchmarks.flops import count_flops, measure_peak_gflops

pytestmark = pytest.mark.timeout(60)


def test_count_flops_of_two_linear_layers_matches_hand_count():
    # Given a 4 -> 3 -> 2 MLP and a batch of 5
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    # When its FLOPs are counted
    flops = count_flops(model, torch.randn(5, 4))
    # Then they are 2 x multiply-adds of the two products: 2*5*4*3 + 2*5*3*2 (bias and ReLU not counted)
    assert flops == 120 + 60, f"expected 180 FLOPs, counted {flops}"


def test_count_flops_of_a_convolution_matches_hand_count():
    # Given a 3 -> 8 channel 2x2 convolution with stride 2 on one 3 x 4 x 4 image (2 x 2 outputs)
    conv = nn.Conv2d(3, 8, kernel_size=2, stride=2, bias=False)
    # Then FLOPs = 2 * outputs (8 * 2 * 2) * multiply-adds per output (3 * 2 * 2)
    assert count_flops(conv, torch.randn(1, 3, 4, 4)) == 2 * 32 * 12


def test_count_flops_counts_attention_projections_even_under_no_grad():
    # Given a multi-head attention layer (width 8, 2 heads) on one sequence of 3 tokens
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)

    def forward(tokens):
        return attention(tokens, tokens, tokens, need_weights=False)[0]

    # When counted from inside no_grad (where nn.MultiheadAttention would take its uncounted fast path)
    with torch.no_grad():
        flops = count_flops(_Wrap(forward), x)
    # Then Q/K/V projections 2*3*8*24, scores 2*2*3*3*4, weighted sum 2*2*3*3*4, output projection 2*3*8*8
    expected = 1152 + 144 + 144 + 384
    assert flops == expected, f"expected {expected} FLOPs (projections included), counted {flops}"


class _Wrap(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def test_measure_peak_gflops_returns_one_positive_sample_per_repeat():
    peak = measure_peak_gflops(size=64, repeats=3)
    assert len(peak.samples) == 3 and peak.unit == "GFLOP/s"
    assert all(value > 0 for value in peak.samples), f"non-positive GFLOP/s in {peak.samples}"


def test_measure_peak_gflops_rejects_a_bad_size():
    with pytest.raises(ValueError, match="size should be >= 1, but got 0"):
        measure_peak_gflops(size=0)
