"""Bundle payloads: the bytes a replica scores with are the bytes the gateway verified, or nothing."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from trustvlm.cluster.payload import PayloadError, collect_payload, materialize_payload
from trustvlm.contract.bundle import BundleError
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

ARTIFACT_FILES = {"artifacts/manifest.json", "artifacts/image_encoder.onnx"}
# the fault bundle has an out-of-distribution gate
BUNDLE_FILES = {"bundle/bundle.json", "bundle/prototypes.npz", "bundle/trust_head.onnx", "bundle/ood_gate.onnx"}


@pytest.fixture
def fault_export_and_bundle(fault_export, make_fault_bundle, tmp_path):
    return fault_export, make_fault_bundle(tmp_path / "fault_bundle")


@pytest.fixture
def payload(fault_export_and_bundle):
    export, bundle = fault_export_and_bundle
    return collect_payload(export, bundle, "fault:0")


def test_a_payload_carries_the_manifest_the_encoder_and_the_bundle_with_their_sha256(payload):
    assert set(payload.files) == ARTIFACT_FILES | BUNDLE_FILES
    for name, data in payload.files.items():
        assert payload.sha256[name] == hashlib.sha256(data).hexdigest(), name
    assert payload.size_bytes == sum(map(len, payload.files.values()))


def test_a_materialized_payload_loads_and_scores_like_the_original(payload, fault_export_and_bundle, tmp_path):
    # Given the payload written out on another "node"
    artifacts, bundle = materialize_payload(payload, tmp_path / "node")
    # Then the single-machine loader verifies it and it scores a grey image as the original does
    here = load_scorer(artifacts, bundle, ScorerConfig(threads=1))
    original = load_scorer(*fault_export_and_bundle, ScorerConfig(threads=1))
    grey = {"embedding": np.full((1, 32, 32, 3), 100, np.uint8)}
    assert here.bundle_id == original.bundle_id
    np.testing.assert_allclose(here.run(grey).kappa, original.run(grey).kappa, rtol=0, atol=0)


def test_a_payload_whose_bytes_changed_on_the_way_is_refused_and_nothing_is_written(payload, tmp_path):
    name = "artifacts/image_encoder.onnx"
    damaged = bytearray(payload.files[name])
    damaged[len(damaged) // 2] ^= 0xFF
    tampered = dataclasses.replace(payload, files={**payload.files, name: bytes(damaged)})
    with pytest.raises(PayloadError, match=r"image_encoder.onnx has sha256 .* refusing it"):
        materialize_payload(tampered, tmp_path / "node")
    assert not (tmp_path / "node" / name).exists()


def test_a_payload_file_name_outside_its_folders_is_refused(payload, tmp_path):
    evil = dataclasses.replace(payload, files={"../escape": b"x"},
                               sha256={"../escape": hashlib.sha256(b"x").hexdigest()})
    with pytest.raises(PayloadError, match="refusing the file name"):
        materialize_payload(evil, tmp_path / "root")
    assert not (tmp_path / "escape").exists()


def test_a_bundle_of_an_auxiliary_prototype_encoder_is_refused_with_what_to_do(fault_export_and_bundle, tmp_path):
    import json  # noqa: PLC0415

    export, bundle = fault_export_and_bundle
    info = json.loads((bundle / "bundle.json").read_text())
    info["aux_encoder"] = {"model": "dinov2_vitb14", "precision": "fp32", "engine_sha256": "0" * 64,
                           "preprocess": info["preprocess"], "embed_dim": 8, "weights_id": "x",
                           "architecture": "dinov2"}
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="serve this one without --cluster"):
        collect_payload(export, copy, "x")
