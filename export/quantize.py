"""int8 image encoders: ONNX Runtime static quantization (QDQ, per-channel weights) and their gates.

Use int8 to run the image encoder on a CPU (ONNX Runtime's CPU provider); fp16 is for GPUs. The
text encoder stays fp32: it runs once per class at calibration, never per frame. An int8 export
writes ``image_encoder.int8.onnx`` beside the fp32 files; the manifest's ``int8`` entry lists it
with the fp32 ``text_encoder.onnx``, so every reader of ``precisions[...]`` works unchanged.

Recipe (:data:`DEFAULT_RECIPE`, recorded in the manifest):

* ``quant_pre_process`` (ONNX shape inference and ONNX Runtime's basic optimizations). Symbolic
  shape inference is skipped: it cannot follow the Reshape of open_clip's attention.
* ``quantize_static`` in QDQ format: weights int8, per output channel, symmetric; activations
  uint8, per tensor, MinMax ranges from the calibration images. Only MatMul, Gemm and Conv with a
  constant weight are quantized (``MatMulConstBOnly``): attention's ``Q @ K^T`` and
  ``softmax @ V``, LayerNorm, GELU and Softmax stay float.
* ``reduce_range=True`` (7-bit weights). x86 CPUs without VNNI (AVX2, AVX-512F without VNNI)
  multiply uint8 x int8 pairs with ``vpmaddubsw``, whose int16 pair sums saturate; 7-bit
  weights cannot saturate. Measured on this machine (AMD EPYC, AVX2, no VNNI) on random-init
  ViT-B/32: min cosine to fp32 0.929 with 8-bit weights, 0.9995 with 7-bit. Costs nothing on
  VNNI CPUs beyond one bit of weight resolution, and the artifact may run on either.
* Calibration images: the "demo shots", k per class (seed 0) of the Fashion-MNIST calibration
  split, disjoint from the parity images, preprocessed as the manifest says.

Gates (the export writes nothing unless all pass):

* cosine(fp32 torch, int8 ONNX) >= :data:`INT8_MIN_COSINE` (0.99) for every parity image; the
  fp16 gate (0.999) is out of reach for 8-bit arithmetic;
* zero-shot top-1 agreement with the fp32 torch model >= :data:`INT8_MIN_AGREEMENT` (99%), for
  trained weights. With random-init weights the agreement is measured and recorded, not gated:
  their zero-shot predictions are near-ties, so agreement measures tie-breaking noise, not the
  quantization (random-init ViT-B/32 here: int8 min cosine 0.99944 yet 95.0% agreement; its fp16
  export, with an error a thousand times smaller, already flips 1 prediction in 200). The trained
  demo model reaches 99.0% at min cosine 0.9989. The cosine gate applies to every export;
* the trust gate: TrustVLM (lambda = 1) AUROC on the 10,000 clean Fashion-MNIST test images
  within :data:`TRUST_GATE_MAX_AUROC_DROP` (0.5 points) of the fp32 export's, prototypes and
  threshold built as in ``trustvlm eval``. It applies to :data:`TRUST_GATE_MODEL` with trained
  weights; elsewhere it is recorded as not applicable, with the reason (random-init weights make
  no meaningful predictions, and other models are not Fashion-MNIST classifiers).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from trustvlm.export import parity
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder

INT8_MIN_COSINE = 0.99
INT8_MIN_AGREEMENT = 0.99
TRUST_GATE_MODEL = "demo_fmnist"
TRUST_GATE_MAX_AUROC_DROP = 0.005
TRUST_GATE_TEMPLATES = ("a photo of a {}.",)
CALIBRATION_SHOTS_PER_CLASS = 16
CALIBRATION_SEED = 0


class QuantizationError(RuntimeError):
    """ONNX Runtime could not quantize an encoder."""


@dataclass(frozen=True)
class QuantizationRecipe:
    """How an fp32 encoder becomes int8 (see the module docstring)."""

    quant_format: str = "QDQ"
    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    matmul_const_b_only: bool = True
    calibrate_method: str = "MinMax"
    shots_per_class: int = CALIBRATION_SHOTS_PER_CLASS
    seed: int = CALIBRATION_SEED

    def to_dict(self) -> dict:
        data = asdict(self)
        data["op_types"] = list(self.op_types)
        return data


DEFAULT_RECIPE = QuantizationRecipe()


def calibration_indices(labels: np.ndarray, exclude: np.ndarray, shots_per_class: int = CALIBRATION_SHOTS_PER_CLASS,
                        seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Sorted indices of `shots_per_class` images per class, drawn (seeded) from those not in `exclude`.

    Raises:
        ValueError: A class with fewer than `shots_per_class` candidates, or `shots_per_class` < 1.
    """
    from trustvlm.calibration.image_prototypes import sample_shots  # noqa: PLC0415

    candidates = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=np.int64))
    classes = int(np.max(labels)) + 1
    picked = sample_shots(np.asarray(labels)[candidates], classes, shots_per_class, seed)
    return np.sort(candidates[picked.reshape(-1)])


class _PixelBatches:
    """A CalibrationDataReader over uint8 pixel batches (duck-typed: ONNX Runtime calls get_next)."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch_size: int):
        self._batches = iter([{input_name: pixels[i:i + batch_size]} for i in range(0, len(pixels), batch_size)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of the reader interface; one pass is all MinMax needs
        pass


def quantize_image_encoder(source: Path, target: Path, pixels: np.ndarray,
                           recipe: QuantizationRecipe = DEFAULT_RECIPE, batch_size: int = 16) -> None:
    """Write the int8 (QDQ) version of the fp32 image encoder `source` to `target`.

    Args:
        source: fp32 image encoder (uint8 pixels in, embedding out).
        target: Where to write the quantized graph.
        pixels: uint8 calibration batch, ``N x S x S x 3``, preprocessed as the manifest says.
        recipe: The quantization settings.
        batch_size: Images per calibration run.

    Raises:
        ValueError: No calibration images, or pixels that are not uint8 NHWC.
        QuantizationError: ONNX Runtime's quantizer failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    if pixels.ndim != 4 or pixels.dtype != np.uint8 or len(pixels) == 0:
        raise ValueError(f"calibration pixels should be a non-empty uint8 N x S x S x 3 batch, "
                         f"but got {pixels.dtype} {pixels.shape}")
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    fd, prepared = tempfile.mkstemp(prefix=".int8-prepared-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        quant_pre_process(str(source), prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared, str(target), _PixelBatches(input_name, pixels, batch_size),
            quant_format=getattr(QuantFormat, recipe.quant_format), per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range, activation_type=getattr(QuantType, recipe.activation_type),
            weight_type=getattr(QuantType, recipe.weight_type), op_types_to_quantize=list(recipe.op_types),
            calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
            extra_options={"MatMulConstBOnly": recipe.matmul_const_b_only})
    except Exception as error:  # the quantizer raises many types (onnx, numpy, its own asserts)
        raise QuantizationError(f"ONNX Runtime could not quantize {source.name}: "
                                f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
                                ) from error
    finally:
        Path(prepared).unlink(missing_ok=True)
    onnx.checker.check_model(str(target))


def agreement_gate_applies(weights_id: str) -> tuple[bool, str]:
    """Whether the zero-shot agreement gate applies to an int8 export, and why not when it does not."""
    if weights_id == "random-init":
        return False, RANDOM_INIT_AGREEMENT_REASON
    return True, ""


RANDOM_INIT_AGREEMENT_REASON = (
    "random-init weights: zero-shot predictions are near-ties that any rounding flips (the fp16 export of the "
    "random-init ViT-B/32, at min cosine 0.9999997, already flips 1 in 200); measured and recorded, not gated")


def int8_parity(reference: tuple[np.ndarray, np.ndarray | None], image_engine: OnnxEncoder,
                text_engine: OnnxEncoder | None, pixels: np.ndarray, tokens: np.ndarray | None,
                prompts_per_class: int, gate_agreement: bool = True) -> parity.ParityReport:
    """Parity figures of an int8 image encoder (text through `text_engine`, the fp32 one), int8 gates set.

    With ``gate_agreement=False`` (random-init weights, :func:`agreement_gate_applies`) the top-1
    agreement is measured but not gated; the cosine gate always applies.
    """
    report = parity.check_parity(reference, image_engine, text_engine, pixels, tokens, "int8", prompts_per_class)
    gated = text_engine is not None and gate_agreement
    return replace(report, min_cosine_required=INT8_MIN_COSINE,
                   min_agreement_required=INT8_MIN_AGREEMENT if gated else None)


@dataclass(frozen=True)
class TrustGateReport:
    """TrustVLM's misclassification detection, fp32 against int8 (or why it was not measured).

    AUROC values are fractions (0.8815 = 88.15 points).
    """

    applicable: bool
    reason: str = ""
    fp32_auroc: float | None = None
    int8_auroc: float | None = None
    fp32_aurc_x1000: float | None = None
    int8_aurc_x1000: float | None = None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    test_images: int = 0
    max_auroc_drop: float = TRUST_GATE_MAX_AUROC_DROP

    def to_dict(self) -> dict:
        return asdict(self)

    def failures(self) -> list[str]:
        """What misses the gate, in words (empty when it passes or does not apply)."""
        if not self.applicable:
            return []
        drop = self.fp32_auroc - self.int8_auroc
        if not drop <= self.max_auroc_drop:  # NaN fails too
            return [f"TrustVLM AUROC {100 * self.int8_auroc:.2f} is {100 * drop:.2f} points below fp32's "
                    f"{100 * self.fp32_auroc:.2f} (at most {100 * self.max_auroc_drop:.1f} allowed)"]
        return []


def trust_gate_applies(model: str, weights_id: str) -> tuple[bool, str]:
    """Whether the trust gate applies to an export, and why not when it does not."""
    if model != TRUST_GATE_MODEL:
        return False, (f"the trust gate runs the Fashion-MNIST demo evaluation, meaningful for {TRUST_GATE_MODEL} "
                       f"only, not {model}")
    if weights_id == "random-init":
        return False, "random-init weights make no meaningful predictions to detect errors in"
    return True, ""


def check_trust_gate(fp32_engine: OnnxEncoder, int8_engine: OnnxEncoder, text_prototypes: np.ndarray,
                     logit_scale: float, preprocess, test_limit: int | None = None) -> TrustGateReport:
    """TrustVLM (lambda = 1) on clean Fashion-MNIST test images with each image encoder.

    Prototypes (k = 16 shots from the calibration split, seed 0), halves and metrics exactly as
    ``trustvlm eval`` computes them (:func:`trustvlm.calibration.evaluate.evaluate_dataset`); only
    the image encoder differs between the two runs.

    Args:
        fp32_engine, int8_engine: The two image encoders.
        text_prototypes: ``C x D`` text prototypes (fp32 text encoder), shared by both runs.
        logit_scale: The model's logit scale.
        preprocess: The manifest's :class:`~trustvlm.runtime.decode.preprocess.PreprocessConfig`.
        test_limit: Use only the first N test images (None: all 10,000; tests use fewer).
    """
    from trustvlm.calibration.evaluate import (DatasetEmbeddings, EvalConfig, evaluate_dataset,  # noqa: PLC0415
                                               load_eval_splits)
    from trustvlm.calibration.image_prototypes import encode_images  # noqa: PLC0415
    from trustvlm.data.fashion_mnist import to_rgb  # noqa: PLC0415

    calib, test = load_eval_splits(test_limit)
    calib_rgb, test_rgb = to_rgb(calib.images), to_rgb(test.images)
    config = EvalConfig(shifts=(), ablations=False)
    metrics = {}
    for name, engine in (("fp32", fp32_engine), ("int8", int8_engine)):
        data = DatasetEmbeddings("clean", encode_images(engine, calib_rgb, preprocess), calib.labels,
                                 encode_images(engine, test_rgb, preprocess), test.labels)
        metrics[name] = evaluate_dataset(data, text_prototypes, logit_scale, config, calib.class_names).metrics
    fp32, int8 = metrics["fp32"]["trustvlm"], metrics["int8"]["trustvlm"]
    return TrustGateReport(True, "", fp32["auroc"], int8["auroc"], fp32["aurc_x1000"], int8["aurc_x1000"],
                           fp32["accuracy"], int8["accuracy"], len(test.labels))


def format_trust_gate(report: TrustGateReport) -> str:
    """One line of trust gate figures."""
    if not report.applicable:
        return f"trust gate int8: not applicable ({report.reason})"
    return (f"trust gate int8: TrustVLM AUROC fp32 {100 * report.fp32_auroc:.2f} / int8 {100 * report.int8_auroc:.2f}, "
            f"AURC x1000 {report.fp32_aurc_x1000:.2f} / {report.int8_aurc_x1000:.2f}, accuracy "
            f"{100 * report.fp32_accuracy:.2f}% / {100 * report.int8_accuracy:.2f}% on {report.test_images} test "
            f"images -> {'FAIL' if report.failures() else 'PASS'}")


def gate_text_prototypes(text_engine: OnnxEncoder, tokenizer, class_names) -> np.ndarray:
    """``C x D`` float64 text prototypes of `class_names` (paper template), as ``build_text_prototypes`` makes them."""
    from trustvlm.calibration.text_prototypes import normalize_rows  # noqa: PLC0415
    from trustvlm.models.prompts import build_prompts  # noqa: PLC0415

    prompts = [p for per_class in build_prompts(class_names, list(TRUST_GATE_TEMPLATES)) for p in per_class]
    tokens = tokenizer(prompts).numpy().astype(np.int64)
    embeddings = normalize_rows(text_engine.encode_in_batches(tokens, 256).astype(np.float64))
    return normalize_rows(embeddings.reshape(len(class_names), len(TRUST_GATE_TEMPLATES), -1).mean(axis=1))
