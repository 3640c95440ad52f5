"""``trustvlm decode-gate``: measure what reduced-resolution JPEG decoding does to a model, and record it.

For each precision of an export, the image encoder embeds the same JPEGs twice: decoded at full
size and decoded at a reduced DCT scale (what ``trustvlm serve --decode-scale auto`` would do),
both resized as the manifest says. Two checks, as an export's parity record:

* every image (real frames: OpenCV's vtest, Megamind and tree videos, at their own size and
  upscaled to 1920x1080; and the labelled set): the cosine of its reduced-path embedding to its
  full-path one, >= 0.995;
* a labelled set (Fashion-MNIST test images, upscaled so that each of 1/2, 1/4 and 1/8 scale is
  used): the top-1 class of each embedding by its nearest class prototype (the class means of the
  full-path embeddings), reduced against full, agreeing on >= 99 %.

Reduced decoding first leaves the resize no headroom (short side >= the input size); if that
fails, a short side of >= 2x the input size. The first that passes is recorded and used.

The record (:mod:`trustvlm.contract.decode_gate`) goes to ``decode_gate.json`` in the artifacts
folder; the service decodes reduced only for an encoder that passed it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from tqdm import tqdm

from trustvlm.contract.bundle import engine_sha256
from trustvlm.contract.decode_gate import (DECODE_GATE_FILE, DECODE_GATE_SCHEMA_VERSION, MIN_COSINE,
                                           MIN_TOP1_AGREEMENT)
from trustvlm.contract.files import write_json_atomic
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.scoring.engines import ONNXRUNTIME, open_image_engine
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.decode.image_codec import decode_image, jpeg_scale_factor
from trustvlm.runtime.decode.preprocess import PreprocessConfig, resize_and_crop

VIDEO_FOLDER = Path("/usr/share/doc/opencv-doc/examples/data")
VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi")
JPEG_QUALITY = 90
#: Short side of the reduced image, in multiples of the input size, tried in turn: 1 is the cheapest.
HEADROOMS = (1, 2)


def read_video_frames(path: Path, count: int) -> list[np.ndarray]:
    """`count` frames spread over the video (BGR)."""
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or count
    frames = []
    for index in np.linspace(0, max(total - 1, 0), count).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            frames.append(frame)
    capture.release()
    return frames


def to_jpeg(bgr: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(bgr[..., ::-1]), quality=JPEG_QUALITY, colorspace="RGB")


def frame_jpegs(frames_per_video: int, folder: Path = VIDEO_FOLDER) -> tuple[list[bytes], list[str]]:
    """The real-frame JPEGs (each frame at its own size and at 1920x1080) and the videos they came from."""
    jpegs, sources = [], []
    for name in VIDEOS:
        if not (folder / name).exists():
            continue
        sources.append(name)
        for frame in read_video_frames(folder / name, frames_per_video):
            jpegs += [to_jpeg(frame), to_jpeg(cv2.resize(frame, (1920, 1080), interpolation=cv2.INTER_CUBIC))]
    return jpegs, sources


def labelled_jpegs(size: int, count: int) -> tuple[list[bytes], np.ndarray]:
    """Fashion-MNIST test images upscaled to size x 2, 4 and 8 (in turn) as JPEGs, and their labels."""
    from trustvlm.data.fashion_mnist import load_split, to_rgb  # noqa: PLC0415

    test = load_split("test")
    jpegs = []
    for index, image in enumerate(to_rgb(test.images[:count])):
        side = size * (2, 4, 8)[index % 3]
        jpegs.append(to_jpeg(cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)))
    return jpegs, test.labels[:count]


def embed(engine, jpegs: list[bytes], preprocess: PreprocessConfig, min_side: int, desc: str) -> np.ndarray:
    """L2-normalized embeddings of `jpegs` decoded with the service's decoder (`min_side` 0: full size)."""
    rows = []
    for start in tqdm(range(0, len(jpegs), 32), desc=desc, unit="batch", leave=False):
        pixels = [resize_and_crop(decode_image(ReceivedFrame(FrameHeader("gate", 0, 0, Encoding.JPEG), jpeg, 0),
                                               min_side), preprocess) for jpeg in jpegs[start:start + 32]]
        rows.append(engine.encode(np.stack(pixels)))
    embeddings = np.concatenate(rows).astype(np.float64)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def nearest_prototype(embeddings: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    return np.argmax(embeddings @ prototypes.T, axis=1)


def measure(engine, preprocess: PreprocessConfig, full: tuple[np.ndarray, np.ndarray], frames: list[bytes],
            labelled: list[bytes], labels: np.ndarray, headroom: int, precision: str) -> dict:
    """Reduced decode with `headroom` against the full-decode embeddings `full` (frames, labelled)."""
    min_side = headroom * preprocess.size
    reduced_frames = embed(engine, frames, preprocess, min_side, f"{precision} frames, headroom {headroom}")
    reduced_labelled = embed(engine, labelled, preprocess, min_side, f"{precision} labelled, headroom {headroom}")
    cosines = np.concatenate([np.sum(full[0] * reduced_frames, axis=1), np.sum(full[1] * reduced_labelled, axis=1)])
    prototypes = np.stack([full[1][labels == c].mean(axis=0) for c in np.unique(labels)])
    top_full, top_reduced = nearest_prototype(full[1], prototypes), nearest_prototype(reduced_labelled, prototypes)
    agreement = float(np.mean(top_full == top_reduced))
    scales = sorted({jpeg_scale_factor(*simplejpeg.decode_jpeg_header(j)[1::-1], min_side) for j in frames + labelled})
    return {"passed": bool(cosines.min() >= MIN_COSINE and agreement >= MIN_TOP1_AGREEMENT),
            "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()), "top1_agreement": agreement,
            "top1_accuracy_full": float(np.mean(top_full == labels)),
            "top1_accuracy_reduced": float(np.mean(top_reduced == labels)), "scales": scales}


def gate_precision(artifacts: Path, manifest: dict, precision: str, frames: list[bytes], labelled: list[bytes],
                   labels: np.ndarray, threads: int | None) -> dict:
    """The gate record entry of one precision's image encoder: the first headroom of 1, 2 that passes."""
    preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
    engine = open_image_engine(artifacts, manifest, precision, ONNXRUNTIME, ("cpu",), False, threads, 32)
    full = (embed(engine, frames, preprocess, 0, f"{precision} frames, full"),
            embed(engine, labelled, preprocess, 0, f"{precision} labelled, full"))
    tried = {}
    for headroom in HEADROOMS:
        tried[str(headroom)] = measure(engine, preprocess, full, frames, labelled, labels, headroom, precision)
        if tried[str(headroom)]["passed"]:
            break
    entry = dict(tried[str(headroom)], headroom=headroom, tried=tried, frames=len(frames), labelled=len(labelled))
    return dict(entry, sha256=engine_sha256(manifest, precision, towers=("image",))["image_encoder"])


def run_decode_gate(artifacts: str | os.PathLike, precisions: tuple[str, ...] | None = None,
                    frames_per_video: int = 40, labelled_count: int = 1200, threads: int | None = None) -> dict:
    """Measure every precision (or `precisions`) of the export in `artifacts`; write and return the record.

    Raises:
        ValueError: No real frames (opencv-doc missing), or a precision the export does not have.
        trustvlm.contract.manifest.ArtifactError: Missing or corrupt artifacts.
    """
    artifacts = Path(artifacts)
    manifest = read_manifest(artifacts)
    available = tuple(manifest.get("precisions", {}))
    chosen = precisions or available
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ValueError(f"{artifacts} has no {unknown} export; it has {list(available)}")
    frames, sources = frame_jpegs(frames_per_video)
    if not frames:
        raise ValueError(f"no video of {list(VIDEOS)} in {VIDEO_FOLDER}: install opencv-doc "
                         "(apt-get install opencv-doc)")
    labelled, labels = labelled_jpegs(int(manifest["preprocess"]["size"]), labelled_count)
    started = time.monotonic()
    encoders = {p: gate_precision(artifacts, manifest, p, frames, labelled, labels, threads) for p in chosen}
    record = {"schema_version": DECODE_GATE_SCHEMA_VERSION, "model": manifest["model"],
              "passed": all(entry["passed"] for entry in encoders.values()), "encoders": encoders,
              "preprocess": dict(manifest["preprocess"]),
              "required": {"min_cosine": MIN_COSINE, "min_top1_agreement": MIN_TOP1_AGREEMENT},
              "sources": sources + ["fashion-mnist test (upscaled x2, x4, x8)"],
              "seconds": round(time.monotonic() - started, 1),
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
    write_json_atomic(artifacts / DECODE_GATE_FILE, record)
    return record
