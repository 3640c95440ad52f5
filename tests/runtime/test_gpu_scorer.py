"""The scorer on a GPU: IOBinding with CUDA OrtValues, and the TensorRT-engine backend.

Runs only where onnxruntime-gpu sees a CUDA device (and, for the engine backend, where tensorrt
imports); skipped elsewhere with the reason. Figures are compared with the CPU scorer on the same
bundle and the same real Fashion-MNIST frames.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="needs onnxruntime-gpu and a CUDA device (this onnxruntime offers "
                              f"{ort.get_available_providers()})"),
]


def frames_of(images: np.ndarray) -> list[ReceivedFrame]:
    return [ReceivedFrame(FrameHeader("cam", seq, 1, Encoding.RAW, image.shape, "uint8"),
                          np.ascontiguousarray(image).tobytes(), 2) for seq, image in enumerate(images)]


def assert_close_decisions(got, expected, kappa_atol: float, min_agreement: float) -> None:
    """Same classes (mostly), kappa within `kappa_atol`, and the same decision wherever kappa is not that close
    to the threshold."""
    assert len(got) == len(expected) and all(d.kappa is not None for d in got), [d.reason for d in got]
    agreement = np.mean([g.class_id == e.class_id for g, e in zip(got, expected)])
    assert agreement >= min_agreement, f"class agreement {agreement:.3f} < {min_agreement}"
    same = [(g, e) for g, e in zip(got, expected) if g.class_id == e.class_id]
    np.testing.assert_allclose([g.kappa for g, _ in same], [e.kappa for _, e in same], atol=kappa_atol)
    clear = [(g, e) for g, e in same if abs(e.kappa - e.threshold) > kappa_atol]
    assert clear and all(g.decision is e.decision for g, e in clear)


def test_cuda_scorer_keeps_embeddings_on_the_device_and_matches_the_cpu(demo_export, demo_bundle, fmnist_images):
    cpu = load_scorer(demo_export, demo_bundle, ScorerConfig())
    gpu = load_scorer(demo_export, demo_bundle, ScorerConfig(providers=("cuda",)))
    assert gpu._device == "cuda", "encoder and head on CUDA must take the IOBinding path"
    assert gpu.encoder.encode_to_ortvalue(np.zeros((1, 32, 32, 3), np.uint8)).device_name().lower() == "cuda"
    images, _ = fmnist_images
    assert_close_decisions(gpu.decide(frames_of(images)), cpu.decide(frames_of(images)), 1e-4, 1.0)


def test_the_tensorrt_engine_backend_matches_onnxruntime(tmp_path, fmnist_images):
    pytest.importorskip("tensorrt", reason="the TensorRT-engine backend needs the tensorrt package")
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415
    from trustvlm.export.pipeline import ExportRequest, export_model  # noqa: PLC0415

    export_model(ExportRequest("demo_fmnist", precision="fp16", format="engine", output_root=tmp_path,
                               parity_images=200))
    artifacts = tmp_path / "demo_fmnist"
    calibrate(artifacts, "fashion-mnist", tmp_path / "bundle", k=8, lam=1.0, precision="fp16")
    onnx = load_scorer(artifacts, tmp_path / "bundle", ScorerConfig(providers=("cuda",)))
    engine = load_scorer(artifacts, tmp_path / "bundle", ScorerConfig(providers=("cuda",), backend="tensorrt-engine"))
    assert engine.encoder.providers[0] == "TensorRTEngine" and engine._device == "cuda"
    images, _ = fmnist_images
    assert_close_decisions(engine.decide(frames_of(images)), onnx.decide(frames_of(images)), 1e-2, 0.95)
