"""Scoring: decoded frames -> image encoder -> the bundle's trust head -> one decision per frame.

A :class:`BundleScorer` is one verified prototype bundle with its sessions: the model's image
encoder (an ONNX Runtime session, or a TensorRT engine with ``backend="tensorrt-engine"``, see
:mod:`trustvlm.runtime.scoring.engines`), the auxiliary image encoder for a bundle whose image
prototypes come from one (TrustVLM's DINOv2 option), and the bundle's ``trust_head.onnx``. ONNX
Runtime sessions are created through :class:`~trustvlm.runtime.scoring.onnx_engine.OnnxEncoder` on one
provider list, so a GPU provider that ONNX Runtime cannot give is refused unless the CPU
fallback was asked for.

Decision rule: accept iff the bundle's score (the trust head output its entry of
:data:`trustvlm.contract.scores.SCORES` names: ``kappa`` for ``trustvlm``, ``kappa_star`` for
``trustvlm_star``) ``>= threshold``, once the bundle's out-of-distribution gate, if it has one,
passed the frame (:mod:`trustvlm.runtime.scoring.ood_gate`; an atypical frame defers, ``out_of_distribution``).
A bundle without a feasible, finite threshold (``inf``, NaN, or ``-inf``, which would accept
everything) defers everything (``no_threshold``). A predicted
class outside the bundle's classes is an engine error for that frame. Failures never stop the
stream: an undecodable or misshaped frame, a non-finite output row, or an engine error on the
batch (every frame of it) becomes ``defer`` with its reason.

Device residency: when the encoders and the head all run on the GPU, the batch runs through
IOBinding, so the embeddings go from the encoders to the trust head as device-side OrtValues,
and the prototypes are initializers of the head that stay on the device; only the uint8 pixels
go up and the small outputs come back. Otherwise the plain ``run`` path is used (binding would
only add copies). The binding logic is tested on the CPU with CPU OrtValues; on a GPU it runs
where one exists (tests/runtime/test_gpu_scorer.py). :class:`ScorerSlot` holds the current scorer;
a reload builds and self-checks a new one first, then swaps the reference (atomic for the scoring
thread, which reads it once per batch). Many bundles over one encoder: :mod:`trustvlm.runtime.scoring.routing`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trustvlm.contract.bundle import (BundleError, PrototypeBundle, load_bundle,
                                      read_bundle_info)
from trustvlm.contract.manifest import model_name, read_manifest
from trustvlm.contract.scores import (AUX_HEAD_INPUT, FLOAT_OUTPUTS, FUSED_OUTPUTS, HEAD_INPUT, HEAD_OUTPUTS,
                                      score_spec)
from trustvlm.runtime.decode.decode_pool import FramePreparer
from trustvlm.runtime.scoring.engines import backend_spec, device_of
from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.decode.image_codec import decode_image
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason, TopKEntry, bundle_entry
from trustvlm.runtime.scoring.onnx_engine import EngineError, OnnxEncoder
from trustvlm.runtime.scoring.ood_gate import open_ood_gate
from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings
from trustvlm.runtime.decode.preprocess import PreprocessConfig, resize_and_crop
from trustvlm.runtime.scoring.scorer_config import ScorerConfig
from trustvlm.runtime.scoring.towers import ImageTower, check_batch_limits, open_tower

__all__ = ["Scorer", "ScorerConfig", "TrustHeadOutput", "ImageTower", "BundleScorer", "ScorerSlot", "load_scorer",
           "bundle_id_of", "model_id_of"]

#: Intra-op threads of the trust head and the gate: graphs of microseconds, where more threads only wake and spin.
SMALL_GRAPH_THREADS = 1

class Scorer(Protocol):
    """What the service's scoring loop needs of a scorer (:class:`BundleScorer`, a camera map's
    :class:`~trustvlm.runtime.scoring.routing.RoutedScorer`, the cluster's gateway scorer).

    ``decodes_own_frames``: True when :meth:`decide` takes the frames as received and decodes them itself
    (the cluster scorer's replicas do); False when the service's decode pool prepares them first, with
    :meth:`tower_preprocess`, and hands them to :meth:`decide` as `prepared`.
    """

    model_id: str
    bundle_id: str
    threshold: float
    score_name: str
    decodes_own_frames: bool

    def decide(self, frames: list[ReceivedFrame], prepared: list | None = None) -> list[DecisionMessage]: ...

    def defer(self, notice: Notice) -> DecisionMessage: ...

    def bundles(self) -> list[dict]: ...

    def tower_preprocess(self) -> dict[str, PreprocessConfig]: ...


@dataclass(frozen=True)
class TrustHeadOutput:
    """The trust head's outputs for one batch (``trustvlm.contract.scores.HEAD_OUTPUTS``, then ``FUSED_OUTPUTS``:
    None where the head has no fitted fused score)."""

    pred: np.ndarray
    kappa: np.ndarray
    msp: np.ndarray
    s_ii: np.ndarray
    pred_star: np.ndarray
    kappa_star: np.ndarray
    topk_ids: np.ndarray
    topk_probs: np.ndarray
    fused: np.ndarray | None = None
    fused_star: np.ndarray | None = None

    def non_finite_fields(self, row: int) -> list[str]:
        """Names of the float outputs that are NaN or inf in `row` (checked for the whole batch at the first call)."""
        names, bad = self._non_finite
        return [name for name, column in zip(names, bad) if column[row]]

    @functools.cached_property
    def _non_finite(self) -> tuple[list[str], list[np.ndarray]]:
        names = [name for name in FLOAT_OUTPUTS + FUSED_OUTPUTS if getattr(self, name) is not None]
        rows = len(self.kappa)
        return names, [~np.isfinite(getattr(self, name)).reshape(rows, -1).all(axis=1) for name in names]


def bundle_id_of(bundle: PrototypeBundle) -> str:
    """``<model>:<12 hex>`` of the bundle's recorded content (bundle.json, file hashes included)."""
    digest = hashlib.sha256(json.dumps(bundle.info.to_dict(), sort_keys=True).encode()).hexdigest()
    return f"{bundle.info.model}:{digest[:12]}"


def model_id_of(manifest: dict) -> str:
    """``<model name>@<weights id, 19 characters>`` (the name: ``trustvlm export --name``, else the registry's)."""
    return f"{model_name(manifest)}@{str(manifest.get('weights', {}).get('id', 'unknown'))[:19]}"


class BundleScorer:
    """One verified bundle and its sessions; :meth:`decide` turns frames into decisions.

    A bundle whose image prototypes come from an auxiliary encoder (TrustVLM's DINOv2 option)
    has a second image tower: every frame is decoded once, resized for each encoder, and the
    trust head takes both embeddings. Such a bundle needs `aux_artifacts_dir`; build scorers with
    :func:`load_scorer`, which verifies the bundle and says so in one line when it is missing.
    """

    decodes_own_frames = False  # the service's decode pool prepares its frames (tower_preprocess)

    def __init__(self, artifacts_dir: str | os.PathLike, bundle: PrototypeBundle, config: ScorerConfig,
                 aux_artifacts_dir: str | os.PathLike | None = None, previous: "BundleScorer | None" = None):
        manifest = read_manifest(artifacts_dir)
        info = bundle.info
        self.bundle, self.config, self.precision = bundle, config, info.precision
        reusable = previous.towers if previous is not None else None
        towers = [open_tower(HEAD_INPUT, artifacts_dir, info.precision, config, info.preprocess, reusable)]
        if info.aux_encoder is not None:
            towers.append(open_tower(AUX_HEAD_INPUT, aux_artifacts_dir, info.aux_encoder.precision, config,
                                     info.aux_encoder.preprocess, reusable))
        self.towers = {tower.head_input: tower for tower in towers}
        self.encoder, self.preprocess = towers[0].engine, towers[0].preprocess
        self.head = OnnxEncoder(bundle.trust_head_path, config.providers, config.allow_fallback, SMALL_GRAPH_THREADS,
                                tensorrt=TensorRTProviderSettings(max_batch=config.max_batch), spin=config.spin,
                                arena=False)
        inputs = [item.name for item in self.head.session.get_inputs()]
        names = [output.name for output in self.head.session.get_outputs()]
        expected = list(HEAD_OUTPUTS) + [name for name in FUSED_OUTPUTS if name in info.fused]
        if inputs != list(self.towers) or names != expected:
            raise EngineError(f"{bundle.trust_head_path}: expected inputs {list(self.towers)} and outputs "
                              f"{expected}, got {inputs} and {names}")
        self.head_outputs = tuple(names)
        self.gate = open_ood_gate(bundle, config.providers, config.allow_fallback, SMALL_GRAPH_THREADS,
                                  config.max_batch, config.spin)
        self._prepare = FramePreparer()
        self.class_names = info.class_names
        self.score_name = info.score
        self.score = score_spec(info.score)
        threshold = float(info.threshold.threshold)
        self.threshold = threshold if info.threshold.feasible and math.isfinite(threshold) else float("inf")
        self.model_id, self.bundle_id = model_id_of(manifest), bundle_id_of(bundle)
        devices = {device_of(tower.engine) for tower in towers} | {device_of(self.head)}
        self._device = devices.pop() if config.io_binding and len(devices) == 1 else None
        backend = backend_spec(config.backend)
        if backend.head_providers and device_of(self.head) != backend.embedding_device:  # embeddings stay there
            where = "the GPU" if backend.embedding_device == "cuda" else backend.embedding_device
            raise EngineError(f"the {backend.name} backend runs on {where}: run the trust head there too "
                              f"(--providers {' '.join(backend.head_providers)}), not on {self.head.providers[0]}")
        self.batch_limit = check_batch_limits(towers, config.max_batch)

    def run(self, batches: dict[str, np.ndarray]) -> TrustHeadOutput:
        """Encoders then trust head: `batches` maps each head input to its uint8 N x S x S x 3 pixels."""
        return self.run_gated(batches)[0]

    def run_gated(self, batches: dict[str, np.ndarray]) -> tuple[TrustHeadOutput, np.ndarray]:
        """:meth:`run`, and the out-of-distribution gate's typicality per row (+inf without a gate).

        Batches larger than the smallest engine batch limit run in chunks.

        Raises:
            EngineError: When a session fails.
        """
        rows = len(next(iter(batches.values())))
        if rows <= self.batch_limit:
            return self._run_chunk(batches)
        chunks = [self._run_chunk({name: pixels[start:start + self.batch_limit] for name, pixels in batches.items()})
                  for start in range(0, rows, self.batch_limit)]
        return (TrustHeadOutput(**{name: np.concatenate([getattr(chunk, name) for chunk, _ in chunks])
                                   for name in self.head_outputs}), np.concatenate([t for _, t in chunks]))

    def _run_chunk(self, batches: dict[str, np.ndarray]) -> tuple[TrustHeadOutput, np.ndarray]:
        if self._device is None:
            return self.run_head(batches, self.encode(batches))
        values, embedding = self._run_bound(batches)
        return TrustHeadOutput(**dict(zip(self.head_outputs, values))), self._typicality(batches, embedding, values)

    def encode(self, batches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The image towers alone: each head input's embeddings (host arrays). Raises EngineError."""
        rows = len(next(iter(batches.values())))
        step = max(1, int(min(rows, self.batch_limit)))
        parts = [{name: self.towers[name].engine.encode(pixels[start:start + step]) for name, pixels in batches.items()}
                 for start in range(0, rows, step)]
        return {name: np.concatenate([part[name] for part in parts]) for name in batches}

    def run_head(self, batches: dict[str, np.ndarray], feed: dict[str, np.ndarray]) -> tuple[TrustHeadOutput, Any]:
        """Trust head and gate on embeddings already computed (:meth:`encode`, perhaps by another scorer on the
        same encoder files): the outputs and each row's typicality (+inf without a gate). Raises EngineError."""
        try:
            values = self.head.session.run(list(self.head_outputs), feed)
        except Exception as error:  # onnxruntime raises its own exception types
            shapes = {name: value.shape for name, value in feed.items()}
            raise EngineError(f"trust head failed on embeddings of shapes {shapes}: {error}") from error
        return (TrustHeadOutput(**dict(zip(self.head_outputs, values))),
                self._typicality(batches, feed[HEAD_INPUT], values))

    def _typicality(self, batches: dict[str, np.ndarray], embedding, values: list[np.ndarray]) -> np.ndarray:
        return np.full(len(values[0]), np.inf, np.float32) if self.gate is None else self.gate.typicality(
            batches[HEAD_INPUT], embedding)

    def _run_bound(self, batches: dict[str, np.ndarray]) -> tuple[list[np.ndarray], object]:
        """IOBinding path (GPU): the embeddings stay on the device between the encoders and the head."""
        embeddings = {name: self.towers[name].engine.encode_to_ortvalue(pixels, self._device)
                      for name, pixels in batches.items()}
        try:
            head_binding = self.head.session.io_binding()
            for name, embedding in embeddings.items():
                head_binding.bind_ortvalue_input(name, embedding)
            for name in self.head_outputs:
                head_binding.bind_output(name, "cpu")
            self.head.session.run_with_iobinding(head_binding)
            return head_binding.copy_outputs_to_cpu(), embeddings[HEAD_INPUT]
        except Exception as error:
            shapes = {name: pixels.shape for name, pixels in batches.items()}
            raise EngineError(f"trust head (IOBinding on {self._device}) failed for batches of shapes {shapes}: "
                              f"{error}") from error

    def self_check(self) -> None:
        """Run one grey image through every session; raise EngineError unless the outputs are sane."""
        output = self.run({name: np.full((1, tower.preprocess.size, tower.preprocess.size, 3), 128, np.uint8)
                           for name, tower in self.towers.items()})
        if output.kappa.shape != (1,) or not 0 <= int(output.pred[0]) < len(self.class_names):
            raise EngineError(f"trust head self-check: kappa shape {output.kappa.shape}, pred {output.pred}; "
                              f"expected (1,) and a class index below {len(self.class_names)}")

    def defer(self, notice: Notice) -> DecisionMessage:
        """The decision message of a frame that was decided before scoring."""
        return DecisionMessage(notice.camera_id, notice.seq, notice.capture_ts_ns, notice.receipt_ts_ns,
                               Decision.DEFER, notice.reason, self.threshold, self.score_name, self.model_id,
                               self.bundle_id, detail=notice.detail, seq_last=notice.seq_last, frames=notice.frames)

    def preprocess_frame(self, frame: ReceivedFrame) -> dict[str, np.ndarray]:
        """Decode `frame` once and resize it for every image tower.

        Raises:
            FrameDecodeError: An undecodable or misshaped frame.
            ValueError, cv2.error: An image the preprocessing cannot take.
        """
        image = decode_image(frame)
        return {name: resize_and_crop(image, tower.preprocess) for name, tower in self.towers.items()}

    def bundles(self) -> list[dict]:
        """The bundle in use, as the heartbeat lists it (with a camera map: one entry per bundle and its cameras)."""
        return [bundle_entry(self)]

    def tower_preprocess(self) -> dict[str, PreprocessConfig]:
        """Each head input's preprocessing (what a decode pool resizes frames to)."""
        return {name: tower.preprocess for name, tower in self.towers.items()}

    def decide(self, frames: list[ReceivedFrame], prepared: list | None = None) -> list[DecisionMessage]:
        """Decode, preprocess and score `frames` as one batch; one decision per frame, in order.

        `prepared` (from :mod:`trustvlm.runtime.decode.decode_pool`): per frame, its pixels by head input or
        its defer Notice; None decodes here. Never raises for a frame or engine failure: those frames
        are deferred with the reason.
        """
        decisions: list[DecisionMessage | None] = [None] * len(frames)
        if prepared is None:  # the pool's preparer, on this thread: the same decode errors become the same notices
            towers = self.tower_preprocess()
            prepared = [self._prepare(frame, towers) for frame in frames]
        pixels, rows = [], []
        for index, item in enumerate(prepared):
            if isinstance(item, Notice):
                decisions[index] = self.defer(item)
            else:
                pixels.append(item)
                rows.append(index)
        if rows:
            try:
                output, typicality = self.run_gated({name: np.stack([item[name] for item in pixels])
                                                     for name in self.towers})
            except EngineError as error:
                for index in rows:
                    decisions[index] = self.defer(Notice.for_frame(frames[index], Reason.ENGINE_ERROR,
                                                                   str(error)[:500]))
            else:
                for row, index in enumerate(rows):
                    decisions[index] = self.decision_for(frames[index], output, row, float(typicality[row]))
        return decisions

    def decision_for(self, frame: ReceivedFrame, output: TrustHeadOutput, row: int, typicality: float) -> DecisionMessage:
        bad = output.non_finite_fields(row)
        if bad:
            return self.defer(Notice.for_frame(frame, Reason.NON_FINITE, f"non-finite trust head outputs: {bad}"))
        class_id = int(getattr(output, self.score.prediction)[row])
        kappa = float(getattr(output, self.score.output)[row])
        top_ids = [int(c) for c in output.topk_ids[row]]
        if not all(0 <= c < len(self.class_names) for c in [class_id, *top_ids]):
            return self.defer(Notice.for_frame(frame, Reason.ENGINE_ERROR, f"trust head predicted class {class_id} "
                                               f"(top-k {top_ids}); the bundle has {len(self.class_names)} classes"))
        atypical = self.gate is not None and not self.gate.passes(typicality)
        if atypical:
            decision, reason = Decision.DEFER, Reason.OUT_OF_DISTRIBUTION
        elif self.threshold == float("inf"):
            decision, reason = Decision.DEFER, Reason.NO_THRESHOLD
        elif kappa >= self.threshold:
            decision, reason = Decision.ACCEPT, Reason.MEETS_THRESHOLD
        else:
            decision, reason = Decision.DEFER, Reason.BELOW_THRESHOLD
        top_k = tuple(TopKEntry(c, self.class_names[c], float(p)) for c, p in zip(top_ids, output.topk_probs[row]))
        header = frame.header
        return DecisionMessage(header.camera_id, header.seq, header.capture_ts_ns, frame.receipt_ts_ns, decision,
                               reason, self.threshold, self.score_name, self.model_id, self.bundle_id,
                               detail=f"typicality {typicality:.4g} < {self.gate.threshold:.4g}" if atypical else "",
                               label=self.class_names[class_id], class_id=class_id, kappa=kappa,
                               msp=float(output.msp[row]), s_ii=float(output.s_ii[row]), top_k=top_k,
                               typicality=typicality if self.gate is not None else None)


def load_scorer(artifacts_dir: str | os.PathLike, bundle_dir: str | os.PathLike, config: ScorerConfig,
                previous: BundleScorer | None = None,
                aux_artifacts_dir: str | os.PathLike | None = None) -> BundleScorer:
    """Load and verify a bundle, build its sessions and self-check them.

    `aux_artifacts_dir` (the auxiliary encoder's export folder) is used only for a bundle whose
    image prototypes come from that encoder; a bundle of the VLM's own prototypes ignores it, so
    a reload may move between the two kinds. An encoder of `previous` is reused only when the
    same file (same folder, precision, backend and sha256) would be opened; a swapped engine gets
    a new session, or, if the bundle was not built for it, a BundleMismatchError.

    Raises:
        trustvlm.contract.bundle.BundleError: A bundle that is unreadable or does not match.
        trustvlm.contract.manifest.ArtifactError: Missing or corrupt artifacts.
        EngineError: Sessions that cannot be created or fail the self-check.
    """
    aux = read_bundle_info(bundle_dir).aux_encoder
    if aux is not None and aux_artifacts_dir is None:
        raise BundleError(f"{bundle_dir} takes its image prototypes from the auxiliary encoder {aux.model}: "
                          f"pass that encoder's export folder with --prototype-encoder "
                          f"(e.g. artifacts/{aux.model})")
    aux_dir = aux_artifacts_dir if aux is not None else None
    bundle = load_bundle(bundle_dir, artifacts_dir, aux_dir)
    scorer = BundleScorer(artifacts_dir, bundle, config, aux_dir, previous)
    scorer.self_check()
    return scorer


class ScorerSlot:
    """The current scorer; :meth:`swap` replaces it atomically."""

    def __init__(self, scorer: Scorer):
        self._scorer = scorer
        self._lock = threading.Lock()

    def current(self) -> Scorer:
        with self._lock:
            return self._scorer

    def swap(self, scorer: Scorer) -> Scorer:
        """Install `scorer`; return the one it replaces."""
        with self._lock:
            previous, self._scorer = self._scorer, scorer
            return previous

