"""Shared fixtures: real data, real exports (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trustvlm.data.fashion_mnist import DEFAULT_ROOT
from trustvlm.models.registry import get_model_spec

REPO_ROOT = Path(__file__).resolve().parents[1]


def require_fashion_mnist() -> None:
    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; `make test` does it)")


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory) -> Path:
    """The embedded demo model exported (fp32 + fp16) once for the whole session."""
    require_fashion_mnist()
    from trustvlm.export.pipeline import ExportRequest, export_model

    if not get_model_spec("demo_fmnist").embedded_checkpoint.exists():
        pytest.fail("the embedded demo checkpoint models/checkpoints/demo_fmnist.pt is missing")
    root = tmp_path_factory.mktemp("artifacts")
    export_model(ExportRequest("demo_fmnist", precision="fp16", output_root=root, parity_images=200))
    return root / "demo_fmnist"


#: Test images of the int8 trust gate in tests (the real gate uses all 10,000; enough to check the machinery).
INT8_TRUST_GATE_TEST_IMAGES = 2000


@pytest.fixture(scope="session")
def int8_demo_artifacts(tmp_path_factory) -> Path:
    """The embedded demo model exported with an int8 image encoder (beside fp32) once for the session."""
    require_fashion_mnist()
    from trustvlm.export.pipeline import ExportRequest, export_model

    root = tmp_path_factory.mktemp("int8")
    export_model(ExportRequest("demo_fmnist", precision="int8", output_root=root,
                               trust_gate_images=INT8_TRUST_GATE_TEST_IMAGES))
    return root / "demo_fmnist"


@pytest.fixture()
def fresh_copy(tmp_path):
    """Copy a folder into tmp_path (for tests that damage artifacts)."""
    def copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copytree(source, target)
        return target
    return copy
