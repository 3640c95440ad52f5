"""A bundle whose score is a fused one: the served label and score are the chosen score's."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from trustvlm.calibration.bundle import write_bundle
from trustvlm.calibration.fused_score import fit_fused_model
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.messages import Decision
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer
from tests.runtime.conftest import FAULT_CLASSES, FAULT_SIZE, make_info

pytestmark = pytest.mark.timeout(120)


def _frames(count: int, seed: int = 0) -> list[ReceivedFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for seq in range(count):
        image = rng.integers(0, 256, (FAULT_SIZE, FAULT_SIZE, 3), dtype=np.uint8)
        image[0, 0, :] = 100  # away from the fault encoder's NaN and error pixels
        header = FrameHeader("cam", seq, time.time_ns(), Encoding.RAW, image.shape, "uint8")
        frames.append(ReceivedFrame(header, image.tobytes(), time.time_ns()))
    return frames


def test_the_served_label_is_the_chosen_scores_prediction(fault_export, tmp_path):
    # Given a bundle whose chosen score is fused_star (TrustVLM*'s corrected class, strong prototype term)
    rng = np.random.default_rng(1)
    text, image = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    logits, sims = 20.0 * rng.normal(size=(60, 3)) / 3, rng.normal(size=(60, 3)) / 3
    models = {name: fit_fused_model(name, logits, sims, rng.integers(0, 3, 60), lam=4.0, temperature=0.05)
              for name in ("fused", "fused_star")}
    info = replace(make_info(read_manifest(fault_export), FAULT_CLASSES, -1e6), score="fused_star", lam=4.0,
                   temperature=0.05, fused=models)
    write_bundle(tmp_path / "bundle", text, image, info)
    scorer = load_scorer(fault_export, tmp_path / "bundle", ScorerConfig(threads=1))
    frames = _frames(24)
    # When the frames are decided
    decisions = scorer.decide(frames)
    outputs = scorer.run({"embedding": np.stack([scorer.preprocess_frame(f)["embedding"] for f in frames])})
    # Then each decision carries TrustVLM*'s class and the fused_star score
    assert [d.class_id for d in decisions] == outputs.pred_star.tolist()
    np.testing.assert_allclose([d.kappa for d in decisions], outputs.fused_star, rtol=1e-6)
    assert all(d.decision == Decision.ACCEPT and d.score_name == "fused_star" for d in decisions)
    assert np.any(outputs.pred_star != outputs.pred), "some frames must tell the two predictions apart"
