"""`make export FORMAT=engine`: the engine is parity-gated and recorded so that the runtime can trust it.

No tensorrt and no GPU here: the builder is replaced by one that writes an ONNX file as the "engine",
and the fake tensorrt module of the runtime tests runs it with ONNX Runtime behind the TensorRT 10
calls (CPU buffers). The real build is tests/export/test_tensorrt.py, where a GPU exists.
"""

from __future__ import annotations

import shutil
import sys
from functools import partial

import numpy as np
import pytest
from onnx import TensorProto

from tests.calibration.conftest import _linear_encoder
from tests.conftest import require_fashion_mnist
from tests.runtime import fake_tensorrt
from trustvlm.contract.files import sha256_file
from trustvlm.contract.manifest import read_manifest
from trustvlm.export import tensorrt_engine as builder
from trustvlm.export.pipeline import ExportError, ExportRequest, export_model
from trustvlm.runtime.scoring import tensorrt_engine as runner
from trustvlm.runtime.scoring.engines import tensorrt_engine_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture()
def fake_engine_build(monkeypatch, tmp_path):
    """Replace what needs a GPU; return a dict whose 'source' decides what the "engine" computes."""
    require_fashion_mnist()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module(fake_tensorrt.FakeOptions(max_batch=32)))
    monkeypatch.setattr(builder, "describe_gpu", lambda: ("Fake GPU", "sm00"))
    monkeypatch.setattr(runner, "TensorRTEncoder", partial(runner.TensorRTEncoder, device_type="cpu"))
    chosen = {"source": None}

    def build(onnx_path, cache_dir, precision="fp16", **_):
        cache_dir.mkdir(parents=True, exist_ok=True)
        engine = cache_dir / f"{onnx_path.stem}_fake_{precision}.engine"
        shutil.copyfile(chosen["source"] or onnx_path, engine)
        return engine

    monkeypatch.setattr(builder, "build_engine", build)
    return chosen


def test_an_engine_that_meets_the_parity_gate_is_recorded_for_the_runtime(fake_engine_build, tmp_path):
    export_model(ExportRequest("demo_fmnist", precision="fp16", format="engine", output_root=tmp_path,
                               parity_images=64))
    artifacts = tmp_path / "demo_fmnist"
    manifest = read_manifest(artifacts)
    record = manifest["engines"]["image_encoder"]
    assert list(manifest["engines"]) == ["image_encoder"], "the text encoder runs at calibration only"
    assert record["precision"] == "fp16"
    assert record["onnx_sha256"] == manifest["precisions"]["fp16"]["files"]["image_encoder"]["sha256"]
    assert record["parity"]["image_min_cosine"] >= record["parity"]["min_cosine_required"] == 0.999
    assert record["parity"]["images"] == 64
    path, sha256 = tensorrt_engine_path(artifacts, manifest, "fp16")
    assert path == artifacts / record["file"] and sha256 == sha256_file(path) == record["sha256"]


def test_an_engine_that_misses_the_parity_gate_writes_nothing(fake_engine_build, tmp_path):
    wrong = tmp_path / "wrong.onnx"  # an image encoder of the right shape that computes something else
    _linear_encoder(wrong, "pixels", TensorProto.UINT8, ["batch", 32, 32, 3],
                    np.random.default_rng(0).normal(size=(32 * 32 * 3, 128)))
    fake_engine_build["source"] = wrong
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"parity gate failed \(TensorRT engine, fp16\): image min cosine"):
        export_model(ExportRequest("demo_fmnist", precision="fp16", format="engine", output_root=out,
                                   parity_images=16))
    assert not out.exists() or list(out.iterdir()) == [], "no artifact and no staging folder left behind"


def test_a_new_engine_export_reuses_the_published_folder_and_leaves_one_engine(fake_engine_build, tmp_path, monkeypatch):
    seen = []
    fake = builder.build_engine

    def build(onnx_path, cache_dir, precision="fp16", reuse_from=(), **kwargs):
        seen.append(tuple(reuse_from))
        engine = fake(onnx_path, cache_dir, precision)
        return engine.rename(engine.with_name(f"build{len(seen)}_{engine.name}"))

    monkeypatch.setattr(builder, "build_engine", build)
    for _ in range(2):
        export_model(ExportRequest("demo_fmnist", precision="fp16", format="engine", output_root=tmp_path,
                                   parity_images=16))
    artifacts = tmp_path / "demo_fmnist"
    assert seen[-1] == (artifacts / "engines",), "the published engines folder is offered for reuse"
    listed = read_manifest(artifacts)["engines"]["image_encoder"]["file"]
    assert sorted(p.name for p in (artifacts / "engines").glob("*.engine")) == [listed.split("/")[-1]]
    assert listed.startswith("engines/build2_")
