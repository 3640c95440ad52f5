"""Parity gates: an export fails unless ONNX Runtime reproduces the torch model.

fp32: cosine(torch, onnx) >= 0.9999 for every image and text embedding.
fp16: cosine(fp32 torch, fp16 onnx) >= 0.999 for every embedding, and zero-shot top-1 agreement
      with the fp32 torch model >= 99.5% on real images.

Image encoders without a text tower (auxiliary prototype encoders) are gated on the image
cosines alone: their text figures are None and there is no zero-shot agreement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from trustvlm.export.torch_wrappers import ImageEncoderForExport
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder

FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
FP16_MIN_AGREEMENT = 0.995


class ParityGateError(RuntimeError):
    """An exported encoder that does not match its torch model closely enough."""


@dataclass(frozen=True)
class ParityReport:
    """Figures of one parity check (printed and written to the manifest)."""

    precision: str
    image_min_cosine: float
    image_mean_cosine: float
    text_min_cosine: float | None
    text_mean_cosine: float | None
    images: int
    prompts: int
    top1_agreement: float | None = None
    min_cosine_required: float = FP32_MIN_COSINE
    min_agreement_required: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def failures(self) -> list[str]:
        """What misses its gate, in words (empty when the export passes)."""
        missed = []
        for tower in ("image", "text"):
            value = getattr(self, f"{tower}_min_cosine")
            if value is None:
                continue  # an image encoder alone has no text figures
            if not value >= self.min_cosine_required:  # NaN fails too
                missed.append(f"{tower} min cosine {value:.6f} < {self.min_cosine_required}")
        if self.min_agreement_required is not None and not self.top1_agreement >= self.min_agreement_required:
            missed.append(f"top-1 agreement {self.top1_agreement:.4f} < {self.min_agreement_required}")
        return missed


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@torch.no_grad()
def torch_embeddings(model, pixels: np.ndarray, tokens: torch.Tensor | None, mean, std,
                     batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference embeddings from the torch model (images: uint8 NHWC batch; no tokens: no text)."""
    wrapper = ImageEncoderForExport(model, mean, std).eval()
    images = [wrapper(torch.from_numpy(pixels[i:i + batch_size])).numpy() for i in range(0, len(pixels), batch_size)]
    return np.concatenate(images), None if tokens is None else model.encode_text(tokens).numpy()


def zero_shot_predictions(image_emb: np.ndarray, text_emb: np.ndarray, prompts_per_class: int) -> np.ndarray:
    """Top-1 class of each image against class prototypes (mean of normalized prompt embeddings)."""
    text = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    prototypes = text.reshape(-1, prompts_per_class, text.shape[1]).mean(1)
    return np.argmax(image_emb @ prototypes.T, axis=1)


def check_parity(reference: tuple[np.ndarray, np.ndarray | None], image_engine: OnnxEncoder,
                 text_engine: OnnxEncoder | None, pixels: np.ndarray, tokens: np.ndarray | None, precision: str,
                 prompts_per_class: int) -> ParityReport:
    """Compare the ONNX encoders with the torch reference embeddings (image, text).

    With ``text_engine=None`` (an image encoder alone) only the image cosines are checked.
    """
    ref_image, ref_text = reference
    onnx_image = image_engine.encode_in_batches(pixels, batch_size=32)
    image_cos = rowwise_cosine(ref_image, onnx_image)
    text_min = text_mean = agreement = None
    if text_engine is not None:
        onnx_text = text_engine.encode_in_batches(tokens, batch_size=64)
        text_cos = rowwise_cosine(ref_text, onnx_text)
        text_min, text_mean = float(np.min(text_cos)), float(np.mean(text_cos))
        if precision != "fp32":
            agree = (zero_shot_predictions(ref_image, ref_text, prompts_per_class)
                     == zero_shot_predictions(onnx_image, onnx_text, prompts_per_class))
            agreement = float(agree.mean())
    return ParityReport(
        precision=precision,
        image_min_cosine=float(np.min(image_cos)), image_mean_cosine=float(np.mean(image_cos)),
        text_min_cosine=text_min, text_mean_cosine=text_mean,
        images=len(pixels), prompts=0 if text_engine is None else len(tokens), top1_agreement=agreement,
        min_cosine_required=FP32_MIN_COSINE if precision == "fp32" else FP16_MIN_COSINE,
        min_agreement_required=None if precision == "fp32" or text_engine is None else FP16_MIN_AGREEMENT,
    )


def format_report(report: ParityReport) -> str:
    """One line of parity figures."""
    line = (f"parity {report.precision}: image cosine min {report.image_min_cosine:.7f} "
            f"(mean {report.image_mean_cosine:.7f}, {report.images} images)")
    if report.prompts:
        line += f", text cosine min {report.text_min_cosine:.7f} ({report.prompts} prompts)"
    if report.top1_agreement is not None:
        line += f", zero-shot top-1 agreement {100 * report.top1_agreement:.2f}%"
    return line + (" -> PASS" if not report.failures() else " -> FAIL")
