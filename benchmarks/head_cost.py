"""Per-frame costs beside the image encoder: the fused trust head, decoding and preprocessing.

The trust head (``calibration/trust_head.py``, the ONNX graph the service runs after the encoder)
is timed on random unit prototypes of C classes (1,000 and 10) at the encoder's embedding size,
on ONNX Runtime's CPU provider with the same threads as the encoder. Its cost per frame is
compared with the encoder's cost per frame at the same batch size (target: under 1%).

Decoding and preprocessing are timed through the service's own functions
(:func:`trustvlm.runtime.decode.image_codec.decode_image`, :func:`trustvlm.runtime.decode.preprocess.resize_and_crop`):
a raw BGR frame at the model's size, and a 768 x 576 JPEG (OpenCV's ``vtest.avi`` when installed,
else a synthetic image) decoded, resized and cropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.benchmarks.stats import Figure, time_calls

CLASS_COUNTS = (1000, 10)
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
CALLS_PER_SAMPLE = 50


@dataclass(frozen=True)
class HeadCost:
    """Trust head cost per frame (µs) for one class count and batch size."""

    classes: int
    batch: int
    us_per_frame: Figure


def measure_trust_head(dim: int, batch: int, classes_list=CLASS_COUNTS, repeats: int = 5,
                       threads: int | None = None, logit_scale: float = 100.0) -> list[HeadCost]:
    """µs per frame of the fused trust head for each class count, at `batch` embeddings per call."""
    import onnxruntime as ort  # noqa: PLC0415

    from trustvlm.calibration.numerics import l2_normalize  # noqa: PLC0415
    from trustvlm.calibration.trust_head import build_trust_head  # noqa: PLC0415
    from trustvlm.contract.scores import HEAD_INPUT  # noqa: PLC0415

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(batch, dim)).astype(np.float32)
    results = []
    for classes in classes_list:
        text = l2_normalize(rng.normal(size=(classes, dim)), axis=1)
        image = l2_normalize(rng.normal(size=(classes, dim)), axis=1)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(build_trust_head(text, image, logit_scale).SerializeToString(),
                                       sess_options=options, providers=["CPUExecutionProvider"])
        seconds = time_calls(lambda: session.run(None, {HEAD_INPUT: embeddings}), repeats, CALLS_PER_SAMPLE,
                             warmup=3)
        results.append(HeadCost(classes, batch, seconds.scaled(1e6 / (CALLS_PER_SAMPLE * batch), "µs/frame")))
    return results


def sample_jpeg(width: int = 768, height: int = 576) -> tuple[bytes, str]:
    """A camera-like JPEG (quality 90): the first frame of vtest.avi, else a smooth synthetic image."""
    import cv2  # noqa: PLC0415

    frame, source = None, "synthetic gradient + noise"
    if VTEST.exists():
        capture = cv2.VideoCapture(str(VTEST))
        ok, frame = capture.read()
        capture.release()
        source = f"{VTEST.name} frame 0" if ok else source
        frame = frame if ok else None
    if frame is None:
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
        frame = np.clip(ramp + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes(), f"{source}, {frame.shape[1]}x{frame.shape[0]}"


def measure_preprocessing(preprocess, repeats: int = 5) -> dict[str, tuple[Figure, str]]:
    """µs per frame of decode + resize/crop, through the service's functions, per input kind."""
    from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, ReceivedFrame  # noqa: PLC0415
    from trustvlm.runtime.decode.image_codec import decode_image  # noqa: PLC0415
    from trustvlm.runtime.decode.preprocess import resize_and_crop  # noqa: PLC0415

    size = preprocess.size
    raw = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes()
    jpeg, jpeg_source = sample_jpeg()
    frames = {
        f"raw bgr8 {size}x{size}": (ReceivedFrame(FrameHeader("cam0", 0, 0, Encoding.RAW, (size, size, 3), "uint8",
                                                              PixelFormat.BGR8), raw, 0), f"{len(raw)} bytes"),
        "jpeg": (ReceivedFrame(FrameHeader("cam0", 0, 0, Encoding.JPEG), jpeg, 0), f"{jpeg_source}, {len(jpeg)} bytes"),
    }
    steps = {f"{name}: decode + resize/crop": (lambda f=frame: resize_and_crop(decode_image(f), preprocess), detail)
             for name, (frame, detail) in frames.items()}
    jpeg_frame, jpeg_detail = frames["jpeg"]
    steps["jpeg: decode only"] = (lambda: decode_image(jpeg_frame), jpeg_detail)
    results = {}
    for name, (run, detail) in steps.items():
        seconds = time_calls(run, repeats, 20, warmup=2)
        results[name] = (seconds.scaled(1e6 / 20, "µs/frame"), detail)
    return results
