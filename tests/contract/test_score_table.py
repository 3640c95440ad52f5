"""The score table of the contract against its float64 references, the trust head and the runtime."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import onnx
import pytest

from trustvlm.calibration.numerics import l2_normalize, softmax
from trustvlm.calibration.fused_score import fit_fused_model
from trustvlm.calibration.scores import FITTED_SCORE_FUNCTIONS, SCORE_FUNCTIONS, SCORE_NAMES, compute_scores
from trustvlm.calibration.trust_head import build_trust_head
from trustvlm.contract.scores import (FLOAT_OUTPUTS, FUSED_OUTPUTS, HEAD_OUTPUTS, SCORES, STAR_PREDICTION,
                                      VLM_PREDICTION, ScoreSpec, score_spec)


def _prototypes(seed: int = 0, classes: int = 5, dim: int = 8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(classes, dim)), rng.normal(size=(classes, dim)), rng.normal(size=(16, dim))


def test_every_table_score_has_exactly_one_float64_function():
    fitted = {name for name, spec in SCORES.items() if spec.fitted}
    assert set(SCORE_FUNCTIONS) == set(SCORES) - fitted, "a closed-form score needs its function in SCORE_FUNCTIONS"
    assert set(FITTED_SCORE_FUNCTIONS) == fitted, "a fitted score needs its function in FITTED_SCORE_FUNCTIONS"
    assert fitted == set(FUSED_OUTPUTS)
    assert all(name in SCORE_NAMES for name in SCORES if name not in fitted)


def test_every_table_entry_is_consistent():
    for name, spec in SCORES.items():
        assert spec.name == name
        assert spec.output in (FUSED_OUTPUTS if spec.fitted else FLOAT_OUTPUTS)
        assert spec.prediction in (VLM_PREDICTION, STAR_PREDICTION)
        assert spec.prediction in HEAD_OUTPUTS and spec.prediction not in FLOAT_OUTPUTS
    assert set(FLOAT_OUTPUTS) <= set(HEAD_OUTPUTS)


@pytest.mark.parametrize("aux", [False, True])
def test_the_trust_head_exposes_every_output_the_table_names(aux):
    text, image, _ = _prototypes()
    head = build_trust_head(text, image, 100.0, aux_embedding=aux)
    outputs = [o.name for o in head.graph.output]
    assert outputs == list(HEAD_OUTPUTS)
    for spec in SCORES.values():
        assert spec.fitted or (spec.output in outputs and spec.prediction in outputs)
    float_type = onnx.TensorProto.FLOAT
    assert {o.name for o in head.graph.output if o.type.tensor_type.elem_type == float_type} == set(FLOAT_OUTPUTS)
    # a head built with the fitted scores has their outputs after the others
    logits, sims = np.eye(5)[np.arange(16) % 5] * 10.0, np.eye(5)[(np.arange(16) * 3) % 5]
    labels = np.arange(16) % 5
    fused = {"fused": fit_fused_model("fused", logits, sims, labels),
             "fused_star": fit_fused_model("fused_star", logits, sims, labels, 0.5, 0.1)}
    head = build_trust_head(text, image, 100.0, aux_embedding=aux, fused=fused)
    assert [o.name for o in head.graph.output] == list(HEAD_OUTPUTS + FUSED_OUTPUTS)


def test_the_runtime_reads_the_outputs_the_contract_lists():
    from trustvlm.runtime.scoring.scorer import TrustHeadOutput  # noqa: PLC0415

    assert [f.name for f in fields(TrustHeadOutput)] == list(HEAD_OUTPUTS + FUSED_OUTPUTS)


def test_trust_head_matches_each_table_function():
    ort = pytest.importorskip("onnxruntime")
    text, image, embeddings = _prototypes(1)
    lam, temperature = 0.7, 0.05
    head = build_trust_head(text, image, 100.0, lam, temperature)
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(HEAD_OUTPUTS, session.run(None, {"embedding": embeddings.astype(np.float32)})))
    f = l2_normalize(embeddings, axis=1)
    t, p = l2_normalize(text, axis=1), l2_normalize(image, axis=1)
    logits = 100.0 * f @ t.T
    probs, sims = softmax(logits, axis=1), f @ p.T
    pred = np.argmax(logits, axis=1)
    for name, spec in SCORES.items():
        if spec.fitted:
            continue  # tests/calibration/test_fused_score.py
        confidence, rated = SCORE_FUNCTIONS[name](probs, sims, pred, lam, temperature)
        np.testing.assert_allclose(values[spec.output], confidence, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(values[spec.prediction], rated)


def test_compute_scores_fills_each_table_score_and_its_prediction():
    text, image, embeddings = _prototypes(2)
    scores = compute_scores(embeddings, text, image, 100.0, lam=0.5, temperature=0.1)
    for name, spec in SCORES.items():
        if spec.fitted:
            continue
        assert np.array_equal(scores.prediction_for(name), getattr(scores, spec.prediction))
        assert getattr(scores, name).dtype == np.float64


def test_unknown_score_names_say_which_exist():
    with pytest.raises(ValueError, match=r"score should be one of \('trustvlm', 'trustvlm_star', 'fused', 'fused_star'\), but got 'msp'"):
        score_spec("msp")
    with pytest.raises(ValueError, match="should be a trust head output"):
        ScoreSpec("new", "no_such_output", VLM_PREDICTION, "New")
