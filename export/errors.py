"""The errors of the export stage, in a module that imports nothing heavy.

`trustvlm export` catches them (one line, exit 1) and :mod:`trustvlm.export.preflight` raises them
before torch is imported. Each is also importable from where it is raised (``pipeline``,
``loaded_model``, ``tensorrt_engine``).
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export that cannot be done (bad request, unwritable folder, failed gate)."""


class WeightsUnavailableError(RuntimeError):
    """No weights for a model can be had (offline, missing or corrupt file)."""


class TensorRTUnavailableError(RuntimeError):
    """TensorRT or a CUDA GPU is not available on this machine."""
