"""Running a bundle's out-of-distribution gate (``ood_gate.onnx``; the format is :mod:`trustvlm.contract.ood_gate`).

The scorer runs the gate on every scored batch, after the image encoder and beside the trust head,
on the very pixels and embedding the trust head's prediction comes from. A frame whose typicality
is below the bundle's gate threshold, or not a number, is deferred with reason
``out_of_distribution`` before the trust threshold is looked at; a bundle without a gate passes
every frame to the trust threshold.
"""

from __future__ import annotations

import numpy as np

from trustvlm.contract.bundle import PrototypeBundle
from trustvlm.contract.ood_gate import GATE_EMBEDDING_INPUT, GATE_OUTPUT, GATE_PIXELS_INPUT
from trustvlm.runtime.scoring.onnx_engine import EngineError, OnnxEncoder
from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings

__all__ = ["OodGateSession", "open_ood_gate"]


class OodGateSession:
    """The gate graph of one bundle, on the trust head's providers, and its threshold."""

    def __init__(self, bundle: PrototypeBundle, providers: tuple[str, ...], allow_fallback: bool,
                 threads: int | None, max_batch: int, spin: bool = True):
        self.threshold = float(bundle.info.ood_gate.threshold)
        self.engine = OnnxEncoder(bundle.ood_gate_path, providers, allow_fallback, threads,
                                  tensorrt=TensorRTProviderSettings(max_batch=max_batch), spin=spin, arena=False)
        inputs = [item.name for item in self.engine.session.get_inputs()]
        outputs = [item.name for item in self.engine.session.get_outputs()]
        if inputs != [GATE_PIXELS_INPUT, GATE_EMBEDDING_INPUT] or outputs != [GATE_OUTPUT]:
            raise EngineError(f"{bundle.ood_gate_path}: expected inputs {[GATE_PIXELS_INPUT, GATE_EMBEDDING_INPUT]} "
                              f"and output {[GATE_OUTPUT]}, got {inputs} and {outputs}")

    def typicality(self, pixels: np.ndarray, embedding) -> np.ndarray:
        """float32 ``[batch]`` typicality of uint8 `pixels` and their embedding (numpy, or an OrtValue on a device).

        Raises:
            EngineError: When the session fails.
        """
        try:
            if isinstance(embedding, np.ndarray):
                return self.engine.session.run([GATE_OUTPUT], {GATE_PIXELS_INPUT: pixels,
                                                               GATE_EMBEDDING_INPUT: embedding})[0]
            binding = self.engine.session.io_binding()
            binding.bind_cpu_input(GATE_PIXELS_INPUT, np.ascontiguousarray(pixels))
            binding.bind_ortvalue_input(GATE_EMBEDDING_INPUT, embedding)
            binding.bind_output(GATE_OUTPUT, "cpu")
            self.engine.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        except Exception as error:  # onnxruntime raises its own exception types
            raise EngineError(f"out-of-distribution gate failed on pixels of shape {np.shape(pixels)}: "
                              f"{error}") from error

    def passes(self, typicality: float) -> bool:
        """Whether a frame of this typicality goes on to the trust threshold (NaN never does)."""
        return bool(typicality >= self.threshold)


def open_ood_gate(bundle: PrototypeBundle, providers: tuple[str, ...], allow_fallback: bool,
                  threads: int | None, max_batch: int, spin: bool = True) -> OodGateSession | None:
    """The bundle's gate session, or None for a bundle without a gate."""
    if bundle.ood_gate_path is None:
        return None
    return OodGateSession(bundle, providers, allow_fallback, threads, max_batch, spin)
