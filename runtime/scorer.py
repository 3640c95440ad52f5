"""Scoring: decoded frames -> image encoder -> the bundle's trust head -> one decision per frame.

A :class:`BundleScorer` is one verified prototype bundle with its two ONNX Runtime sessions (the
exported image encoder and the bundle's ``trust_head.onnx``), both created through
:class:`~trustvlm.runtime.onnx_engine.OnnxEncoder` on the same provider list, so a GPU provider
that ONNX Runtime cannot give is refused unless the CPU fallback was asked for.

Decision rule: accept iff the bundle's score (``kappa`` for ``trustvlm``, ``kappa_star`` for
``trustvlm_star``) ``>= threshold``. A bundle without a feasible, finite threshold (``inf``, NaN,
or ``-inf``, which would accept everything) defers everything (``no_threshold``). A predicted
class outside the bundle's classes is an engine error for that frame. Failures never stop the
stream: an undecodable or misshaped frame, a non-finite output row, or an engine error on the
batch (every frame of it) becomes ``defer`` with its reason.

Device residency: on a GPU provider the batch runs through IOBinding, so the embeddings go from
the encoder to the trust head as a device-side OrtValue, and the prototypes are initializers of
the head that stay on the device; only the uint8 pixels go up and the small outputs come back.
On the CPU provider the plain ``run`` path is used (binding would only add copies). The IOBinding
path is written for CUDA/TensorRT and has not run here: this machine has no GPU.

:class:`ScorerSlot` holds the current scorer; a reload builds and self-checks a new one first and
then swaps the reference (atomic for the scoring thread, which reads it once per batch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trustvlm.calibration.bundle import PrototypeBundle, load_bundle
from trustvlm.runtime.artifacts import ArtifactError, encoder_path, read_manifest
from trustvlm.runtime.ingest import FrameDecodeError, decode_image
from trustvlm.runtime.messages import Decision, DecisionMessage, Notice, ReceivedFrame, Reason, TopKEntry
from trustvlm.runtime.onnx_engine import EngineError, OnnxEncoder
from trustvlm.runtime.preprocess import PreprocessConfig, resize_and_crop

__all__ = ["ScorerConfig", "TrustHeadOutput", "BundleScorer", "ScorerSlot", "load_scorer", "bundle_id_of",
           "model_id_of"]

HEAD_INPUT = "embedding"
HEAD_OUTPUTS = ("pred", "kappa", "msp", "s_ii", "pred_star", "kappa_star", "topk_ids", "topk_probs")
_FLOAT_OUTPUTS = ("kappa", "msp", "s_ii", "kappa_star", "topk_probs")
_DEVICE_TYPES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


@dataclass(frozen=True)
class ScorerConfig:
    """How the sessions run.

    Attributes:
        providers: ONNX Runtime providers, short (cpu, cuda, tensorrt) or full names, in order.
        allow_fallback: Accept a session that did not get a requested GPU provider.
        threads: Intra-op threads per session (None: ONNX Runtime's choice).
        io_binding: Use IOBinding on GPU providers (ignored on the CPU).
        max_batch: Most frames per batch (at most one per camera).
        max_wait_ms: How long a batch waits for frames of other cameras once one is there.
    """

    providers: tuple[str, ...] = ("cpu",)
    allow_fallback: bool = False
    threads: int | None = None
    io_binding: bool = True
    max_batch: int = 8
    max_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch should be >= 1, but got {self.max_batch}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms should be >= 0, but got {self.max_wait_ms}")


@dataclass(frozen=True)
class TrustHeadOutput:
    """The trust head's outputs for one batch (names as in calibration/trust_head.py)."""

    pred: np.ndarray
    kappa: np.ndarray
    msp: np.ndarray
    s_ii: np.ndarray
    pred_star: np.ndarray
    kappa_star: np.ndarray
    topk_ids: np.ndarray
    topk_probs: np.ndarray

    def non_finite_fields(self, row: int) -> list[str]:
        """Names of the float outputs that are NaN or inf in `row`."""
        return [name for name in _FLOAT_OUTPUTS if not np.all(np.isfinite(getattr(self, name)[row]))]


def bundle_id_of(bundle: PrototypeBundle) -> str:
    """``<model>:<12 hex>`` of the bundle's recorded content (bundle.json, file hashes included)."""
    digest = hashlib.sha256(json.dumps(bundle.info.to_dict(), sort_keys=True).encode()).hexdigest()
    return f"{bundle.info.model}:{digest[:12]}"


def model_id_of(manifest: dict) -> str:
    """``<model>@<weights id, 19 characters>``."""
    return f"{manifest['model']}@{str(manifest.get('weights', {}).get('id', 'unknown'))[:19]}"


class BundleScorer:
    """One verified bundle and its sessions; :meth:`decide` turns frames into decisions."""

    def __init__(self, artifacts_dir: str | os.PathLike, bundle: PrototypeBundle, config: ScorerConfig,
                 encoder: OnnxEncoder | None = None):
        manifest = read_manifest(artifacts_dir)
        info = bundle.info
        self.bundle, self.config = bundle, config
        self.encoder_sha256 = image_encoder_sha256(artifacts_dir, manifest, info.precision)
        self.precision = info.precision
        self.preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
        self.encoder = encoder or OnnxEncoder(encoder_path(Path(artifacts_dir), manifest, "image", info.precision),
                                              config.providers, config.allow_fallback, config.threads,
                                              info.precision)
        self.head = OnnxEncoder(bundle.trust_head_path, config.providers, config.allow_fallback, config.threads)
        names = [output.name for output in self.head.session.get_outputs()]
        if self.head.input_name != HEAD_INPUT or names != list(HEAD_OUTPUTS):
            raise EngineError(f"{bundle.trust_head_path}: expected input {HEAD_INPUT!r} and outputs "
                              f"{list(HEAD_OUTPUTS)}, got {self.head.input_name!r} and {names}")
        self.class_names = info.class_names
        self.score_name = info.score
        threshold = float(info.threshold.threshold)
        self.threshold = threshold if info.threshold.feasible and math.isfinite(threshold) else float("inf")
        self.model_id, self.bundle_id = model_id_of(manifest), bundle_id_of(bundle)
        device = _DEVICE_TYPES.get(self.encoder.providers[0])
        self._device = device if config.io_binding and device else None

    def run(self, pixels: np.ndarray) -> TrustHeadOutput:
        """Encoder then trust head on one uint8 batch (N x size x size x 3).

        Raises:
            EngineError: When either session fails.
        """
        if self._device is None:
            embedding = self.encoder.encode(pixels)
            try:
                values = self.head.session.run(list(HEAD_OUTPUTS), {HEAD_INPUT: embedding})
            except Exception as error:  # onnxruntime raises its own exception types
                raise EngineError(f"trust head failed on embeddings of shape {embedding.shape}: {error}") from error
        else:
            values = self._run_bound(pixels)
        return TrustHeadOutput(*values)

    def _run_bound(self, pixels: np.ndarray) -> list[np.ndarray]:
        """IOBinding path (GPU providers): the embedding stays on the device between the sessions."""
        try:
            encoder_binding = self.encoder.session.io_binding()
            encoder_binding.bind_cpu_input(self.encoder.input_name, np.ascontiguousarray(pixels))
            encoder_binding.bind_output(self.encoder.output_name, self._device, 0)
            self.encoder.session.run_with_iobinding(encoder_binding)
            embedding = encoder_binding.get_outputs()[0]
            head_binding = self.head.session.io_binding()
            head_binding.bind_ortvalue_input(HEAD_INPUT, embedding)
            for name in HEAD_OUTPUTS:
                head_binding.bind_output(name, "cpu")
            self.head.session.run_with_iobinding(head_binding)
            return head_binding.copy_outputs_to_cpu()
        except Exception as error:
            raise EngineError(f"IOBinding run on {self._device} failed for a batch of shape {pixels.shape}: "
                              f"{error}") from error

    def self_check(self) -> None:
        """Run one grey image through both sessions; raise EngineError unless the outputs are sane."""
        size = self.preprocess.size
        output = self.run(np.full((1, size, size, 3), 128, dtype=np.uint8))
        if output.kappa.shape != (1,) or not 0 <= int(output.pred[0]) < len(self.class_names):
            raise EngineError(f"trust head self-check: kappa shape {output.kappa.shape}, pred {output.pred}; "
                              f"expected (1,) and a class index below {len(self.class_names)}")

    def defer(self, notice: Notice) -> DecisionMessage:
        """The decision message of a frame that was decided before scoring."""
        return DecisionMessage(notice.camera_id, notice.seq, notice.capture_ts_ns, notice.receipt_ts_ns,
                               Decision.DEFER, notice.reason, self.threshold, self.score_name, self.model_id,
                               self.bundle_id, detail=notice.detail)

    def decide(self, frames: list[ReceivedFrame]) -> list[DecisionMessage]:
        """Decode, preprocess and score `frames` as one batch; one decision per frame, in order.

        Never raises for a frame or engine failure: those frames are deferred with the reason.
        """
        decisions: list[DecisionMessage | None] = [None] * len(frames)
        pixels, rows = [], []
        for index, frame in enumerate(frames):
            try:
                pixels.append(resize_and_crop(decode_image(frame), self.preprocess))
                rows.append(index)
            except FrameDecodeError as error:
                decisions[index] = self.defer(Notice.for_frame(frame, error.reason, str(error)))
            except (ValueError, cv2.error) as error:
                decisions[index] = self.defer(Notice.for_frame(frame, Reason.BAD_SHAPE, f"preprocess: {error}"))
        if rows:
            try:
                output = self.run(np.stack(pixels))
            except EngineError as error:
                for index in rows:
                    decisions[index] = self.defer(Notice.for_frame(frames[index], Reason.ENGINE_ERROR,
                                                                   str(error)[:500]))
            else:
                for row, index in enumerate(rows):
                    decisions[index] = self._decision(frames[index], output, row)
        return decisions

    def _decision(self, frame: ReceivedFrame, output: TrustHeadOutput, row: int) -> DecisionMessage:
        bad = output.non_finite_fields(row)
        if bad:
            return self.defer(Notice.for_frame(frame, Reason.NON_FINITE, f"non-finite trust head outputs: {bad}"))
        star = self.score_name == "trustvlm_star"
        class_id = int((output.pred_star if star else output.pred)[row])
        kappa = float((output.kappa_star if star else output.kappa)[row])
        top_ids = [int(c) for c in output.topk_ids[row]]
        if not all(0 <= c < len(self.class_names) for c in [class_id, *top_ids]):
            return self.defer(Notice.for_frame(frame, Reason.ENGINE_ERROR, f"trust head predicted class {class_id} "
                                               f"(top-k {top_ids}); the bundle has {len(self.class_names)} classes"))
        if self.threshold == float("inf"):
            decision, reason = Decision.DEFER, Reason.NO_THRESHOLD
        elif kappa >= self.threshold:
            decision, reason = Decision.ACCEPT, Reason.MEETS_THRESHOLD
        else:
            decision, reason = Decision.DEFER, Reason.BELOW_THRESHOLD
        top_k = tuple(TopKEntry(c, self.class_names[c], float(p)) for c, p in zip(top_ids, output.topk_probs[row]))
        header = frame.header
        return DecisionMessage(header.camera_id, header.seq, header.capture_ts_ns, frame.receipt_ts_ns, decision,
                               reason, self.threshold, self.score_name, self.model_id, self.bundle_id,
                               label=self.class_names[class_id], class_id=class_id, kappa=kappa,
                               msp=float(output.msp[row]), s_ii=float(output.s_ii[row]), top_k=top_k)


def load_scorer(artifacts_dir: str | os.PathLike, bundle_dir: str | os.PathLike, config: ScorerConfig,
                previous: BundleScorer | None = None) -> BundleScorer:
    """Load and verify a bundle, build its sessions and self-check them.

    The image encoder session of `previous` is reused only when the image encoder file on disk
    still matches the manifest and has the sha256 that session was loaded from; a swapped engine
    gets a new session (or, if the bundle was not built for it, a BundleMismatchError).

    Raises:
        trustvlm.calibration.bundle.BundleError: A bundle that is unreadable or does not match.
        trustvlm.runtime.artifacts.ArtifactError: Missing or corrupt artifacts.
        EngineError: Sessions that cannot be created or fail the self-check.
    """
    bundle = load_bundle(bundle_dir, artifacts_dir)
    encoder = None
    if previous is not None and previous.precision == bundle.info.precision:
        manifest = read_manifest(artifacts_dir)
        encoder_path(artifacts_dir, manifest, "image", bundle.info.precision)  # the file on disk must still match
        if image_encoder_sha256(artifacts_dir, manifest, bundle.info.precision) == previous.encoder_sha256:
            encoder = previous.encoder
    scorer = BundleScorer(artifacts_dir, bundle, config, encoder)
    scorer.self_check()
    return scorer


def image_encoder_sha256(artifacts_dir: str | os.PathLike, manifest: dict, precision: str) -> str:
    """The image encoder's sha256 as the manifest records it.

    Raises:
        ArtifactError: The manifest has no image encoder of that precision.
    """
    try:
        return str(manifest["precisions"][precision]["files"]["image_encoder"]["sha256"])
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{artifacts_dir}: the manifest records no {precision} image encoder "
                            f"(missing {error})") from error


class ScorerSlot:
    """The current scorer; :meth:`swap` replaces it atomically."""

    def __init__(self, scorer: BundleScorer):
        self._scorer = scorer
        self._lock = threading.Lock()

    def current(self) -> BundleScorer:
        with self._lock:
            return self._scorer

    def swap(self, scorer: BundleScorer) -> BundleScorer:
        """Install `scorer`; return the one it replaces."""
        with self._lock:
            previous, self._scorer = self._scorer, scorer
            return previous

