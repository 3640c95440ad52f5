"""Fixtures of the pipelines tests: the demo export, a bundle calibrated on a degraded camera, helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from trustvlm.contract.manifest import MANIFEST_NAME
from trustvlm.data.fashion_mnist import DEFAULT_ROOT

REPO = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SHIFT = "low_light"


def require_fashion_mnist() -> None:
    if not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; `make test` does it)")


def require_vtest() -> None:
    if not VTEST.exists():
        pytest.skip(f"{VTEST} is missing (apt-get install opencv-doc; `make test` does it)")


def trustvlm(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``python -m trustvlm ARGS`` to the end (stdout and stderr captured)."""
    return subprocess.run([sys.executable, "-m", "trustvlm", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory) -> Path:
    """The demo model's export: the repository's artifacts/demo_fmnist if there, else exported here."""
    require_fashion_mnist()
    candidates = [Path(os.environ["TRUSTVLM_DEMO_ARTIFACTS"])] if "TRUSTVLM_DEMO_ARTIFACTS" in os.environ else []
    for candidate in candidates + [REPO / "artifacts" / "demo_fmnist"]:
        if (candidate / MANIFEST_NAME).exists():
            return candidate
    from trustvlm.export.pipeline import ExportRequest, export_model  # noqa: PLC0415 - torch, test process only

    return export_model(ExportRequest("demo_fmnist", output_root=tmp_path_factory.mktemp("export"))).output_dir


@pytest.fixture(scope="session")
def camera_bundle(demo_export, tmp_path_factory) -> Path:
    """A bundle calibrated by `trustvlm calibrate` on a small low-light calibration set written by the demo code.

    4 shots per class and 400 held-out images, lambda 1 and alpha 0.3 so the threshold is feasible and
    some low-light frames are accepted, some deferred.
    """
    from trustvlm.pipelines.calibration_set import write_camera_calibration_set  # noqa: PLC0415

    root = tmp_path_factory.mktemp("camera_bundle")
    calibration = write_camera_calibration_set(root / "calibration", SHIFT, 4, held_out_limit=400)
    bundle = root / "bundle"
    result = trustvlm("calibrate", "--artifacts", str(demo_export), "--data", str(calibration.split_file),
                      "--image-root", str(calibration.image_root), "--out", str(bundle), "--k", "4", "--lam", "1",
                      "--alpha", "0.3", "--delta", "0.1", "--threads", "1", timeout_s=180)
    assert result.returncode == 0, f"calibrate failed:\n{result.stderr}"
    return bundle


@pytest.fixture
def zmq_context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
