"""Benchmarks of trustvlm-edge: how fast each stage runs, and how far from the machine's limit.

Use ``make bench`` (``python -m trustvlm.benchmarks``) on a CPU machine: it exports what it needs
into its own artifacts folder (``artifacts/bench``), measures, and writes ``BENCHMARKS.md``.
Use ``make bench-gpu`` (``python -m trustvlm.benchmarks.gpu``) on a CUDA machine: ONNX Runtime's
CUDA and TensorRT providers and torch CUDA, printed as one compact table; it says which
providers are missing and exits 0 where there are none.

Modules, one concept each: :mod:`stats` (repeated timings), :mod:`machine` (what ran them),
:mod:`flops` (FLOP counting and measured peak), :mod:`encoder` (image encoder throughput),
:mod:`head_cost` (trust head and per-frame costs against the encoder), :mod:`e2e` (through the
real ``trustvlm serve``; its cameras and subscriber in :mod:`e2e_link`), :mod:`build_times` (text
prototypes, calibration), :mod:`bench_artifacts` (exports and bundle the benchmarks run on),
:mod:`report` (tables and BENCHMARKS.md), :mod:`suite` (the CPU run), :mod:`gpu` (the GPU run),
:mod:`soak` (a bounded soak of ``serve``: ``trustvlm soak``, ``make soak``), :mod:`cli` (the
``bench`` and ``soak`` subcommands).

Figures are medians with min-max over repeated runs; speed is measured, never asserted.
"""
