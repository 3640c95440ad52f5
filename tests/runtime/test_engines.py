"""Backend choice of the image encoder: ONNX Runtime files, or TensorRT engines checked against them."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from trustvlm.contract.files import sha256_file
from trustvlm.contract.manifest import ArtifactError
from trustvlm.runtime.cli import add_serve_parser, main
from trustvlm.runtime.config import ServiceConfig
from trustvlm.runtime.scoring.engines import (BACKENDS, ONNXRUNTIME, TENSORRT_ENGINE, device_of, open_image_engine,
                                      tensorrt_engine_path)
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer


def manifest_with_engine(folder, **record) -> dict:
    """A manifest whose fp16 image encoder has sha256 'aaa' and an engine record built from it."""
    (folder / "engines").mkdir(exist_ok=True)
    (folder / "engines" / "image.engine").write_bytes(b"serialized engine")
    entry = {"file": "engines/image.engine", "sha256": sha256_file(folder / "engines" / "image.engine"),
             "precision": "fp16", "onnx_sha256": "aaa",
             "parity": {"image_min_cosine": 0.99993, "min_cosine_required": 0.999}, **record}
    return {"model": "demo_fmnist", "engines": {"image_encoder": entry},
            "precisions": {"fp16": {"files": {"image_encoder": {"file": "image_encoder.fp16.onnx", "sha256": "aaa"}}}}}


def test_an_engine_built_from_the_bundles_onnx_file_is_found(tmp_path):
    path, sha256 = tensorrt_engine_path(tmp_path, manifest_with_engine(tmp_path), "fp16")
    assert path == tmp_path / "engines" / "image.engine" and sha256 == sha256_file(path)


@pytest.mark.parametrize("record, precision, message", [
    ({"precision": "fp32"}, "fp16", "the TensorRT engine is fp32 but the bundle was calibrated with the fp16"),
    ({"onnx_sha256": "bbb"}, "fp16", "not built from the fp16 image encoder the manifest lists"),
    ({"onnx_sha256": None}, "fp16", "sha256 differs or is not recorded"),
    ({"file": "engines/gone.engine"}, "fp16", "gone.engine is listed in the manifest but missing"),
    ({"parity": None}, "fp16", "has no passed parity check against the fp16 image encoder"),
    ({"parity": {"image_min_cosine": 0.9981, "min_cosine_required": 0.999}}, "fp16",
     r"no passed parity check .*cosine 0.9981 < required 0.999"),
])
def test_an_engine_that_does_not_match_the_bundle_is_refused(tmp_path, record, precision, message):
    with pytest.raises(ArtifactError, match=message) as caught:
        tensorrt_engine_path(tmp_path, manifest_with_engine(tmp_path, **record), precision)
    assert "make export MODEL=demo_fmnist FORMAT=engine PRECISION=fp16" in str(caught.value)


def test_an_int8_bundle_is_pointed_to_onnxruntime(tmp_path):
    with pytest.raises(ArtifactError, match="int8 bundles run their int8 ONNX image encoder with --backend "
                                            "onnxruntime"):
        tensorrt_engine_path(tmp_path, manifest_with_engine(tmp_path), "int8")


def test_artifacts_without_an_engine_point_to_the_export_and_to_onnxruntime(tmp_path):
    manifest = manifest_with_engine(tmp_path)
    del manifest["engines"]
    with pytest.raises(ArtifactError, match="has no TensorRT engine: build one with `make export MODEL=demo_fmnist "
                                            "FORMAT=engine PRECISION=fp16` on this device, or serve with "
                                            "--backend onnxruntime"):
        tensorrt_engine_path(tmp_path, manifest, "fp16")


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"backend should be one of \('onnxruntime', 'tensorrt-engine'\), "
                                         r"but got 'openvino'"):
        ScorerConfig(backend="openvino")
    with pytest.raises(ValueError, match="backend should be one of"):
        open_image_engine(".", {}, "fp32", "openvino", ("cpu",), False, None)


def test_the_device_follows_the_first_provider():
    class Engine:
        def __init__(self, providers):
            self.providers = providers

    assert device_of(Engine(["CUDAExecutionProvider", "CPUExecutionProvider"])) == "cuda"
    assert device_of(Engine(("TensorRTEngine",))) == "cuda"
    assert device_of(Engine(["CPUExecutionProvider"])) is None


def test_backend_and_prototype_encoder_flags_reach_the_config(tmp_path, capsys):
    assert main(["serve", "--artifacts", "a", "--bundle", "b", "--backend", "tensorrt-engine", "--providers", "cuda",
                 "--prototype-encoder", "aux", "--dump-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["scorer"]["backend"] == TENSORRT_ENGINE and printed["scorer"]["providers"] == ["cuda"]
    assert printed["prototype_encoder"].endswith("/aux")
    config = ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "prototype_encoder": "aux"}, base_dir=tmp_path)
    assert config.prototype_encoder == tmp_path / "aux", "relative paths in a config file follow the file"


def test_serving_the_tensorrt_backend_without_an_engine_fails_in_one_line(demo_export, demo_bundle, capsys):
    assert main(["serve", "--artifacts", str(demo_export), "--bundle", str(demo_bundle), "--backend",
                 "tensorrt-engine", "--ingest", "tcp://127.0.0.1:*", "--publish", "tcp://127.0.0.1:*"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no TensorRT engine: build one with `make export MODEL=demo_fmnist FORMAT=engine" \
        in err, err


def test_the_tensorrt_backend_without_tensorrt_is_an_engine_error(demo_export, demo_bundle, monkeypatch, tmp_path):
    """With an engine listed (as on a device), a machine without tensorrt says so in one line."""
    import sys  # noqa: PLC0415

    from trustvlm.runtime.scoring import engines  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine_file = tmp_path / "image.engine"
    engine_file.write_bytes(b"serialized engine")
    monkeypatch.setattr(engines, "tensorrt_engine_path", lambda *_: (engine_file, sha256_file(engine_file)))
    with pytest.raises(EngineError, match="tensorrt") as caught:
        load_scorer(demo_export, demo_bundle, ScorerConfig(backend=TENSORRT_ENGINE, providers=("cuda",)))
    assert "\n" not in str(caught.value)


def serve_backend_choices() -> list[str]:
    subparsers = argparse.ArgumentParser().add_subparsers()
    add_serve_parser(subparsers)
    return next(action.choices for action in subparsers.choices["serve"]._actions if action.dest == "backend")


def test_serve_offers_exactly_the_backends_of_the_table(monkeypatch):
    assert serve_backend_choices() == list(BACKENDS) == [ONNXRUNTIME, TENSORRT_ENGINE]
    monkeypatch.setitem(BACKENDS, "onnx-copy", replace(BACKENDS[ONNXRUNTIME], name="onnx-copy"))
    assert serve_backend_choices() == [ONNXRUNTIME, TENSORRT_ENGINE, "onnx-copy"]


def test_a_new_table_entry_is_opened_by_the_scorer_without_knowing_it(demo_export, demo_bundle, monkeypatch):
    opened = []

    def open_encoder(request):
        opened.append((request.precision, request.onnx_file.name))
        return BACKENDS[ONNXRUNTIME].open_encoder(request)

    monkeypatch.setitem(BACKENDS, "onnx-copy", replace(BACKENDS[ONNXRUNTIME], name="onnx-copy",
                                                       open_encoder=open_encoder))
    scorer = load_scorer(demo_export, demo_bundle, ScorerConfig(backend="onnx-copy", threads=1))
    assert opened and opened[0][1].endswith(".onnx") and scorer.encoder.providers[0] == "CPUExecutionProvider"


def test_a_backend_that_keeps_embeddings_on_the_gpu_refuses_a_cpu_trust_head(demo_export, demo_bundle, monkeypatch):
    monkeypatch.setitem(BACKENDS, "gpu-only", replace(BACKENDS[ONNXRUNTIME], name="gpu-only",
                                                      embedding_device="cuda", head_providers=("cuda",)))
    with pytest.raises(EngineError, match=r"^the gpu-only backend runs on the GPU: run the trust head there too "
                                          r"\(--providers cuda\), not on CPUExecutionProvider$"):
        load_scorer(demo_export, demo_bundle, ScorerConfig(backend="gpu-only", threads=1))


def test_an_unknown_backend_gets_one_clear_line(tmp_path, capsys):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"artifacts": "a", "bundle": "b", "scorer": {"backend": "openvino"}}))
    assert main(["serve", "--config", str(config)]) == 1
    assert capsys.readouterr().err == ("trustvlm serve: error: backend should be one of ('onnxruntime', "
                                       "'tensorrt-engine'), but got 'openvino'\n")
    with pytest.raises(SystemExit):
        main(["serve", "--artifacts", "a", "--bundle", "b", "--backend", "openvino"])
    assert capsys.readouterr().err.splitlines()[-1] == ("trustvlm serve: error: argument --backend: invalid choice: "
                                                        "'openvino' (choose from 'onnxruntime', 'tensorrt-engine')")


def test_the_scorer_gives_the_tensorrt_provider_its_max_batch(demo_export, demo_bundle, monkeypatch):
    # Given an onnxruntime whose sessions record their providers (and run on the CPU: no GPU here)
    import onnxruntime as ort

    real, seen = ort.InferenceSession, []

    def recording(path, sess_options=None, providers=None):
        seen.append((str(path), providers))
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording)
    # When the scorer opens the encoder and the trust head on the TensorRT provider with max_batch 12
    load_scorer(demo_export, demo_bundle, ScorerConfig(providers=("tensorrt",), allow_fallback=True, max_batch=12))
    # Then both sessions get an engine cache and a profile of 1..12 frames
    options = {path: providers[0][1] for path, providers in seen if isinstance(providers[0], tuple)}
    encoder = next(o for path, o in options.items() if path.endswith("image_encoder.fp16.onnx")
                   or path.endswith("image_encoder.onnx"))
    assert encoder["trt_profile_min_shapes"] == "pixels:1x32x32x3"
    assert encoder["trt_profile_max_shapes"] == "pixels:12x32x32x3"
    assert len(options) == 2 and all(o["trt_engine_cache_enable"] for o in options.values())
