"""Zero-shot accuracy of exported encoders on Fashion-MNIST test images (ONNX Runtime only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.calibration.text_prototypes import build_text_prototypes, normalize_rows
from trustvlm.contract.manifest import encoder_path, model_name, read_manifest
from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.models.prompts import get_templates
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch


@dataclass(frozen=True)
class ZeroShotResult:
    """Accuracy of one zero-shot run."""

    model: str
    weights: str
    precision: str
    templates: str
    images: int
    accuracy: float
    logit_scale: float

    def summary(self) -> str:
        stamp = " [random-init]" if self.weights == "random-init" else ""
        return (f"{self.model}{stamp} {self.precision}: zero-shot top-1 accuracy {100 * self.accuracy:.2f}% "
                f"on {self.images} Fashion-MNIST test images ({self.templates} templates, "
                f"logit scale {self.logit_scale:.1f})")


def zero_shot_check(artifacts_dir: Path, precision: str = "fp32", templates: str = "ensemble",
                    limit: int | None = None) -> ZeroShotResult:
    """Encode the test images and the class prompts with the exported encoders; return accuracy."""
    manifest = read_manifest(artifacts_dir)
    test = load_split("test")
    images, labels = test.images[:limit], test.labels[:limit]
    prototypes = build_text_prototypes(artifacts_dir, test.class_names, get_templates(templates), precision)
    engine = OnnxEncoder(encoder_path(artifacts_dir, manifest, "image", precision), precision=precision)
    pixels = preprocess_batch(to_rgb(images), PreprocessConfig.from_dict(manifest["preprocess"]))
    embeddings = normalize_rows(engine.encode_in_batches(pixels, 256).astype(np.float64))
    predictions = np.argmax(embeddings @ prototypes.T, axis=1)
    return ZeroShotResult(model_name(manifest), manifest["weights"]["id"], precision, templates, len(labels),
                          float(np.mean(predictions == labels)), float(manifest["logit_scale"]))
