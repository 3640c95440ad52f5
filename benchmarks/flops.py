"""FLOPs of a model and the machine's measured fp32 peak: how far the encoder is from the limit.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`: 2 x the multiply-adds of
matrix products, convolutions and attention (LayerNorm, GELU, Softmax and element-wise ops are not
counted; they are a few percent of a ViT's arithmetic).

The CPU kernel of ``scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu``,
what ``nn.MultiheadAttention`` calls on the CPU) is not in FlopCounterMode's registry; it is added
here with torch's own attention formula (``Q @ K^T`` and ``softmax @ V``), otherwise attention
scores would be left out (ViT-B/32: 8.73 instead of 8.82 GFLOP per image).

The count runs with autograd *enabled*. Under ``torch.no_grad()`` ``nn.MultiheadAttention`` takes
its fused fast path (``aten::_native_multi_head_attention``), which FlopCounterMode does not
count: ViT-B/32 then reads 5.89 GFLOP per image instead of 8.82 (the Q/K/V and output
projections, a third of the work, vanish). The same fast path has no ONNX export, which is why
the exporter runs in grad mode too.

The peak is measured, not taken from a datasheet: the best of repeated large fp32 matrix
products in torch (its BLAS, all cores), the ceiling any fp32 encoder run on this machine can
approach.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from trustvlm.benchmarks.stats import Figure, time_calls

PEAK_MATRIX_SIZE = 4096


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


#: Kernels FlopCounterMode does not know: the CPU flash-attention kernel of scaled_dot_product_attention.
EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of `module` on `inputs` (see the module docstring for what counts)."""
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def measure_peak_gflops(size: int = PEAK_MATRIX_SIZE, repeats: int = 5, threads: int | None = None) -> Figure:
    """GFLOP/s of a ``size x size`` fp32 matrix product (torch, `threads` or all cores), per repeat.

    Raises:
        ValueError: `size` below 1.
    """
    if size < 1:
        raise ValueError(f"size should be >= 1, but got {size}")
    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    seconds = time_calls(lambda: torch.mm(a, b, out=out), repeats, warmup=1)
    return seconds.inverse(2.0 * size**3 / 1e9, "GFLOP/s")
