"""`trustvlm decode-gate`: the record it writes is the one the service reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustvlm.contract.bundle import engine_sha256
from trustvlm.contract.decode_gate import DECODE_GATE_FILE, MIN_COSINE, MIN_TOP1_AGREEMENT, check_decode_gate
from trustvlm.contract.manifest import read_manifest
from trustvlm.pipelines.decode_gate import VIDEO_FOLDER, run_decode_gate

pytestmark = pytest.mark.timeout(300)


def test_the_gate_record_says_what_was_measured_and_the_service_reads_it(demo_artifacts, fresh_copy, capsys):
    if not (VIDEO_FOLDER / "vtest.avi").exists():
        pytest.skip(f"{VIDEO_FOLDER}/vtest.avi is missing (apt-get install opencv-doc)")
    artifacts = fresh_copy(demo_artifacts)
    # When the gate runs on a few frames of each video and 90 labelled images
    record = run_decode_gate(artifacts, ("fp32",), frames_per_video=2, labelled_count=90, threads=1)
    # Then the record on disk is the one returned, and each verdict follows from its own measurements
    assert json.loads((artifacts / DECODE_GATE_FILE).read_text()) == json.loads(json.dumps(record))
    entry = record["encoders"]["fp32"]
    assert entry["frames"] >= 8 and entry["frames"] % 2 == 0 and entry["labelled"] == 90, entry  # x 2 sizes
    for tried in entry["tried"].values():
        assert tried["passed"] == (tried["min_cosine"] >= MIN_COSINE and tried["top1_agreement"] >= MIN_TOP1_AGREEMENT)
    assert entry["passed"] == entry["tried"][str(entry["headroom"])]["passed"]
    assert set(entry["scales"]) >= {2, 4, 8}, "the labelled set is upscaled to use every scale"
    # And the service's check agrees with the record, for this encoder only
    manifest = read_manifest(artifacts)
    sha = engine_sha256(manifest, "fp32", towers=("image",))["image_encoder"]
    verdict = check_decode_gate(artifacts, "fp32", sha, dict(manifest["preprocess"]))
    assert verdict.passed == entry["passed"] and verdict.headroom == (entry["headroom"] if entry["passed"] else 0)
    assert not check_decode_gate(artifacts, "fp16", sha, dict(manifest["preprocess"])).passed


def test_the_gate_refuses_a_precision_the_export_does_not_have(demo_artifacts):
    with pytest.raises(ValueError, match=r"has no \['int8'\] export"):
        run_decode_gate(Path(demo_artifacts), ("int8",))
