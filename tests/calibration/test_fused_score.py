"""The fused scores: the fit against scikit-learn, the float32 trust head against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from trustvlm.calibration.fused_score import (cross_fitted_confidence, fit_fused_model, fit_logistic,
                                              fused_confidence, fused_features)
from trustvlm.calibration.metrics import auroc
from trustvlm.calibration.numerics import l2_normalize
from trustvlm.calibration.trust_head import build_trust_head
from trustvlm.contract.fused import FUSED_FEATURES, FusedModel
from trustvlm.contract.scores import FUSED_OUTPUTS, HEAD_OUTPUTS

pytestmark = pytest.mark.timeout(120)


def _data(seed: int = 0, n: int = 400, classes: int = 6, dim: int = 16, aux_dim: int | None = None):
    """Embeddings near their class's text prototype, a quarter of the labels noisy; prototypes of another view."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    emb = text[labels] + 1.3 * rng.normal(size=(n, dim))
    aux = None if aux_dim is None else emb @ rng.normal(size=(dim, aux_dim)) + 0.5 * rng.normal(size=(n, aux_dim))
    image_source = emb if aux is None else aux
    image = np.stack([image_source[labels == c][:8].mean(axis=0) for c in range(classes)])
    labels = np.where(rng.random(n) < 0.25, rng.integers(0, classes, n), labels)
    f = l2_normalize(emb, axis=1)
    g = f if aux is None else l2_normalize(aux, axis=1)
    logits = 40.0 * f @ l2_normalize(text, axis=1).T
    sims = g @ l2_normalize(image, axis=1).T
    return text, image, emb, aux, labels, logits, sims


@pytest.mark.parametrize("score", list(FUSED_FEATURES))
def test_the_fit_matches_scikit_learn_on_the_same_features(score):
    sklearn = pytest.importorskip("sklearn.linear_model")
    # Given the standardized features of real-looking scores
    _, _, _, _, labels, logits, sims = _data(1)
    model = fit_fused_model(score, logits, sims, labels, lam=0.5, temperature=0.05, l2=2.0)
    x, pred = fused_features(score, logits, sims, 0.5, 0.05)
    standard = (x - np.asarray(model.mean)) / np.asarray(model.scale)
    # When scikit-learn fits the same penalised likelihood (C = 1 / l2, unpenalised intercept)
    oracle = sklearn.LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(standard, pred == labels)
    # Then the coefficients agree
    np.testing.assert_allclose(model.coef, oracle.coef_[0], atol=1e-6)
    assert model.intercept == pytest.approx(oracle.intercept_[0], abs=1e-6)
    assert model.features == FUSED_FEATURES[score] and model.n_fit == len(labels)


def test_the_fused_score_ranks_right_above_wrong_better_than_chance():
    _, _, _, _, labels, logits, sims = _data(2, n=1000)
    confidence, pred = cross_fitted_confidence("fused", logits, sims, labels)
    assert auroc(confidence, pred == labels) > 0.6, "scored out of fold, it still tells right from wrong"


def test_one_class_targets_give_a_constant_finite_score():
    coef, intercept = fit_logistic(np.random.default_rng(0).normal(size=(20, 3)), np.ones(20))
    assert np.all(coef == 0) and np.isfinite(intercept) and intercept > 0


def test_fit_logistic_refuses_bad_input():
    with pytest.raises(ValueError, match="l2 should be > 0"):
        fit_logistic(np.zeros((4, 2)), np.array([0, 1, 0, 1]), l2=0.0)
    with pytest.raises(ValueError, match="features must be finite"):
        fit_logistic(np.array([[np.nan], [1.0]]), np.array([0, 1]))


@pytest.mark.parametrize("aux_dim", [None, 12])
def test_the_float32_head_matches_the_float64_reference(aux_dim):
    ort = pytest.importorskip("onnxruntime")
    # Given both fused models fitted on calibration-like data
    text, image, emb, aux, labels, logits, sims = _data(3, aux_dim=aux_dim)
    models = {"fused": fit_fused_model("fused", logits, sims, labels),
              "fused_star": fit_fused_model("fused_star", logits, sims, labels, lam=1.0, temperature=0.05)}
    # When the head computes them in float32
    head = build_trust_head(text, image, 40.0, lam=1.0, temperature=0.05, aux_embedding=aux is not None,
                            fused=models)
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"embedding": emb.astype(np.float32)}
    if aux is not None:
        feed["aux_embedding"] = aux.astype(np.float32)
    values = dict(zip(HEAD_OUTPUTS + FUSED_OUTPUTS, session.run(None, feed)))
    # Then predictions are identical and scores within 1e-5 of the float64 reference
    for name, model in models.items():
        confidence, pred = fused_confidence(model, logits, sims)
        np.testing.assert_allclose(values[name], confidence, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(values["pred_star" if name == "fused_star" else "pred"], pred, err_msg=name)
    assert np.ptp(values["fused"]) > 1.0, "the scores vary, so the comparison means something"


def test_fused_model_round_trips_and_validates():
    _, _, _, _, labels, logits, sims = _data(4, n=60)
    model = fit_fused_model("fused_star", logits, sims, labels, lam=0.5, temperature=0.1)
    assert FusedModel.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="features should be"):
        FusedModel.from_dict({**model.to_dict(), "features": ["msp"]})
    with pytest.raises(ValueError, match="unknown keys \\['extra'\\]"):
        FusedModel.from_dict({**model.to_dict(), "extra": 1})
