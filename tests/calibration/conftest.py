"""Fixtures of the calibration tests: tiny synthetic exports, and the real demo model's export.

* ``make_artifacts`` writes a *synthetic* export (linear ONNX encoders + manifest) in seconds:
  plumbing tests run without any trained model.
* ``demo_artifacts`` (tests/conftest.py) is the real demo model, exported once per session.
* ``demo_embeddings`` encodes the Fashion-MNIST calibration and test splits with it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME

SIZE = 32
CONTEXT = 16
TINY_PREPROCESS = {"size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                   "resize_mode": "shortest", "crop": "center"}


def _linear_encoder(path: Path, input_name: str, elem_type: int, shape: list, weight: np.ndarray) -> None:
    """input -> Cast(float) -> Reshape(batch, -1) -> MatMul(weight) -> 'embedding'."""
    nodes = [
        helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["as_float", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["embedding"]),
    ]
    inits = [numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
             numpy_helper.from_array(weight.astype(np.float32), "weight")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, elem_type, shape)],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                                             ["batch", weight.shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_tiny_artifacts(folder: Path, image_dim: int = 8, text_dim: int | None = None, nan: bool = False,
                         seed: int = 0, model: str = "tiny") -> Path:
    """A synthetic fp32 export: random linear image/text encoders and a manifest that lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image_w = rng.normal(size=(SIZE * SIZE * 3, image_dim)) / 255.0
    if nan:
        image_w[:, 0] = np.nan
    text_w = rng.normal(size=(CONTEXT, text_dim or image_dim))
    _linear_encoder(folder / "image_encoder.onnx", "pixels", TensorProto.UINT8, ["batch", SIZE, SIZE, 3], image_w)
    _linear_encoder(folder / "text_encoder.onnx", "tokens", TensorProto.INT64, ["batch", CONTEXT], text_w)
    files = {f"{tower}_encoder": {"file": f"{tower}_encoder.onnx",
                                  "sha256": sha256_file(folder / f"{tower}_encoder.onnx")}
             for tower in ("image", "text")}
    manifest = {"schema_version": "1.0", "model": model, "architecture": "demo-fmnist-vit-tiny",
                "weights": {"id": f"sha256:tiny-{seed}", "source": "synthetic", "random_init": False},
                "preprocess": TINY_PREPROCESS, "text_input": {"name": "tokens", "dtype": "int64",
                                                              "shape": ["batch", CONTEXT]},
                "embedding": {"name": "embedding", "dim": image_dim, "normalized": False},
                "logit_scale": 20.0, "precisions": {"fp32": {"files": files}}}
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return folder


@pytest.fixture
def make_artifacts(tmp_path):
    """Factory: make_artifacts(name, **options) -> a synthetic export folder under tmp_path."""
    def make(name: str = "tiny_export", **options) -> Path:
        return write_tiny_artifacts(tmp_path / name, **options)
    return make


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    """One synthetic export shared by the session (read-only by convention)."""
    return write_tiny_artifacts(tmp_path_factory.mktemp("tiny") / "tiny")


@dataclass(frozen=True)
class DemoEmbeddings:
    """Real demo-model embeddings of the Fashion-MNIST calibration and test splits."""

    artifacts: Path
    calib: np.ndarray
    calib_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    text: np.ndarray
    logit_scale: float


@pytest.fixture(scope="session")
def demo_embeddings(demo_artifacts) -> DemoEmbeddings:
    from trustvlm.calibration.calibrate import open_encoders  # noqa: PLC0415
    from trustvlm.calibration.image_prototypes import encode_images  # noqa: PLC0415
    from trustvlm.calibration.text_prototypes import build_text_prototypes  # noqa: PLC0415
    from trustvlm.data.fashion_mnist import load_split, to_rgb  # noqa: PLC0415
    from trustvlm.models.prompts import get_templates  # noqa: PLC0415

    encoders = open_encoders(demo_artifacts)
    calib, test = load_split("calib"), load_split("test")
    text = build_text_prototypes(demo_artifacts, calib.class_names, get_templates("paper"))
    return DemoEmbeddings(demo_artifacts, encode_images(encoders.image, to_rgb(calib.images), encoders.preprocess),
                          calib.labels, encode_images(encoders.image, to_rgb(test.images), encoders.preprocess),
                          test.labels, text, float(encoders.manifest["logit_scale"]))
