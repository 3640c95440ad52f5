"""Tests for trustvlm.calibration.scores (float64 reference scores)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from trustvlm.calibration.numerics import l2_normalize, log_softmax, logsumexp, softmax
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, SCORE_NAMES, TrustScores, compute_scores

LN3 = math.log(3.0)
LN9 = math.log(9.0)
EYE2 = np.eye(2)


# --------------------------------------------------------------------------- helpers


def test_softmax_by_hand() -> None:
    # exp(ln 3) : exp(0) = 3 : 1
    np.testing.assert_allclose(softmax(np.array([LN3, 0.0])), [0.75, 0.25], rtol=0, atol=1e-15)
    # Shifted by 1000: no overflow, same result.
    np.testing.assert_allclose(softmax(np.array([[1000.0 + LN3, 1000.0]])), [[0.75, 0.25]], atol=1e-15)
    assert softmax(np.zeros((2, 4))).dtype == np.float64


def test_softmax_axis() -> None:
    out = softmax(np.array([[LN3, 0.0], [0.0, 0.0]]), axis=0)
    np.testing.assert_allclose(out, [[0.75, 0.5], [0.25, 0.5]], atol=1e-15)


def test_log_softmax_and_logsumexp_by_hand() -> None:
    np.testing.assert_allclose(logsumexp(np.array([[LN3, 0.0]])), [math.log(4.0)], atol=1e-15)
    np.testing.assert_allclose(
        log_softmax(np.array([LN3, 0.0])), [math.log(0.75), math.log(0.25)], atol=1e-15
    )
    # Far tail stays finite where exp() underflows.
    assert np.isfinite(log_softmax(np.array([0.0, -2000.0]))).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_softmax_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="logits contains 1 NaN/inf"):
        softmax(np.array([[0.0, bad]]))


def test_l2_normalize_by_hand() -> None:
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 4.0], [0.0, -2.0]])),
                               [[0.6, 0.8], [0.0, -1.0]], atol=1e-15)
    # Squaring these would overflow / underflow without the peak rescaling.
    np.testing.assert_allclose(l2_normalize(np.array([3e200, 4e200])), [0.6, 0.8], atol=1e-15)
    np.testing.assert_allclose(l2_normalize(np.array([3e-310, 4e-310])), [0.6, 0.8], atol=1e-6)
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 0.0], [4.0, 1.0]]), axis=0),
                               [[0.6, 0.0], [0.8, 1.0]], atol=1e-15)


def test_l2_normalize_rejects_zero_rows() -> None:
    with pytest.raises(ValueError, match=r"emb has 1 zero-norm vector.*first flat indices \[1\]"):
        l2_normalize(np.array([[1.0, 0.0], [0.0, 0.0]]), name="emb")


def test_l2_normalize_rejects_nan() -> None:
    with pytest.raises(ValueError, match="x contains 1 NaN/inf"):
        l2_normalize(np.array([[1.0, np.nan]]))


# --------------------------------------------------------------------------- scores by hand


def test_compute_scores_two_classes_by_hand() -> None:
    """f = (1, 0), T = I, s = ln 3 -> p = (3/4, 1/4); P0 = (0.6, 0.8) -> cos 0.6."""
    protos = np.array([[0.6, 0.8], [0.0, 1.0]])
    # temperature = 0.6 / ln 3 makes the prototype softmax (3/4, 1/4) as well.
    sc = compute_scores(np.array([[2.0, 0.0]]), EYE2, protos, logit_scale=LN3, lam=0.5,
                        temperature=0.6 / LN3)
    assert sc.pred.tolist() == [0] and sc.pred.dtype == np.int64
    np.testing.assert_allclose(sc.msp, [0.75], atol=1e-14)
    np.testing.assert_allclose(sc.max_logit, [LN3], atol=1e-14)
    np.testing.assert_allclose(sc.energy, [math.log(4.0)], atol=1e-14)
    np.testing.assert_allclose(sc.neg_entropy, [0.75 * math.log(0.75) + 0.25 * math.log(0.25)],
                               atol=1e-14)
    np.testing.assert_allclose(sc.doctor, [0.75**2 + 0.25**2], atol=1e-14)
    np.testing.assert_allclose(sc.s_ii, [0.6], atol=1e-14)
    np.testing.assert_allclose(sc.trustvlm, [0.75 + 0.5 * 0.6], atol=1e-14)
    # q = (0.75 + 0.5 * 0.75, 0.25 + 0.5 * 0.25) = (1.125, 0.375)
    assert sc.pred_star.tolist() == [0]
    np.testing.assert_allclose(sc.trustvlm_star, [1.125 + 0.5 * 0.6], atol=1e-14)
    assert sc.proto_pred.tolist() == [0]
    np.testing.assert_array_equal(sc.proto_sim, sc.s_ii)


def test_trustvlm_star_can_overrule_the_text_prediction() -> None:
    """Text says class 0 (3/4), the image prototypes say class 1 (9/10)."""
    protos = np.array([[0.0, 1.0], [0.8, 0.6]])  # cos(f, P) = (0, 0.8)
    sc = compute_scores(np.array([[1.0, 0.0]]), EYE2, protos, logit_scale=LN3, lam=1.0,
                        temperature=0.8 / LN9)  # prototype logits (0, ln 9) -> (0.1, 0.9)
    assert sc.pred.tolist() == [0]
    np.testing.assert_allclose(sc.s_ii, [0.0], atol=1e-14)
    np.testing.assert_allclose(sc.trustvlm, [0.75], atol=1e-14)
    # q = (0.75 + 0.1, 0.25 + 0.9) = (0.85, 1.15) -> pred* = 1, kappa* = 1.15 + 0.8
    assert sc.pred_star.tolist() == [1]
    np.testing.assert_allclose(sc.trustvlm_star, [1.95], atol=1e-14)
    assert sc.proto_pred.tolist() == [1]
    named = sc.named()
    assert named["trustvlm_star"].pred.tolist() == [1]
    assert named["trustvlm"].pred.tolist() == [0]
    assert named["s_ii"].pred.tolist() == [0]
    np.testing.assert_allclose(named["trustvlm_star"].confidence, [1.95], atol=1e-14)


def test_default_temperature_is_0_01() -> None:
    """cos(f, P) = (0.6, 0) at T = 0.01 -> prototype softmax (1 / (1 + e^-60), ...)."""
    assert DEFAULT_TEMPERATURE == 0.01
    protos = np.array([[0.6, 0.8], [0.0, 1.0]])
    sc = compute_scores(np.array([[1.0, 0.0]]), EYE2, protos, logit_scale=LN3)
    q0 = 0.75 + 1.0 / (1.0 + math.exp(-60.0))
    np.testing.assert_allclose(sc.trustvlm_star, [q0 + 0.6], atol=1e-14)
    np.testing.assert_allclose(sc.trustvlm, [0.75 + 0.6], atol=1e-14)  # lam defaults to 1


def test_uniform_prediction_and_tie_break() -> None:
    """f orthogonal to both text prototypes: logits 0, p uniform, ties go to class 0."""
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    protos = np.array([[0.0, 0.6, 0.8], [0.0, 1.0, 0.0]])
    sc = compute_scores(np.array([[0.0, 0.0, 5.0]]), text, protos, logit_scale=100.0)
    assert sc.pred.tolist() == [0]
    np.testing.assert_allclose(sc.msp, [0.5], atol=1e-15)
    np.testing.assert_allclose(sc.max_logit, [0.0], atol=1e-15)
    np.testing.assert_allclose(sc.energy, [math.log(2.0)], atol=1e-15)
    np.testing.assert_allclose(sc.neg_entropy, [-math.log(2.0)], atol=1e-15)
    np.testing.assert_allclose(sc.doctor, [0.5], atol=1e-15)
    np.testing.assert_allclose(sc.s_ii, [0.8], atol=1e-15)


def _naive_scores(f, text, protos, s, lam, temp):
    """Independent per-sample implementation with the math module."""
    rows = []
    for x in f:
        x = x / math.sqrt(sum(v * v for v in x))
        tn = [t / math.sqrt(sum(v * v for v in t)) for t in text]
        pn = [p / math.sqrt(sum(v * v for v in p)) for p in protos]
        logits = [s * sum(a * b for a, b in zip(x, t)) for t in tn]
        cos = [sum(a * b for a, b in zip(x, p)) for p in pn]
        z = sum(math.exp(v) for v in logits)
        p = [math.exp(v) / z for v in logits]
        zp = sum(math.exp(c / temp) for c in cos)
        q = [pi + lam * math.exp(c / temp) / zp for pi, c in zip(p, cos)]
        pred = max(range(len(p)), key=lambda i: logits[i])
        pred_star = max(range(len(q)), key=lambda i: q[i])
        rows.append({
            "pred": pred, "msp": max(p), "max_logit": max(logits), "energy": math.log(z),
            "neg_entropy": sum(pi * math.log(pi) for pi in p), "doctor": sum(pi * pi for pi in p),
            "s_ii": cos[pred], "trustvlm": max(p) + lam * cos[pred], "pred_star": pred_star,
            "trustvlm_star": max(q) + lam * cos[pred_star],
            "proto_pred": max(range(len(cos)), key=lambda i: cos[i]),
        })
    return rows


def test_matches_naive_per_sample_loop() -> None:
    rng = np.random.default_rng(1)
    f, text, protos = rng.normal(size=(7, 5)), rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    sc = compute_scores(f, text, protos, logit_scale=4.0, lam=0.7, temperature=0.3)
    naive = _naive_scores(f, text, protos, 4.0, 0.7, 0.3)
    for name in ("pred", "pred_star", "proto_pred"):
        assert getattr(sc, name).tolist() == [r[name] for r in naive], name
    for name in SCORE_NAMES:
        np.testing.assert_allclose(getattr(sc, name), [r[name] for r in naive], rtol=1e-12,
                                   atol=1e-12, err_msg=name)
    # The data is not degenerate: both predictions vary and sometimes disagree.
    assert len(set(sc.pred.tolist())) > 1
    assert np.any(sc.pred != sc.proto_pred)


def test_scale_invariance_of_inputs() -> None:
    rng = np.random.default_rng(2)
    f, text, protos = rng.normal(size=(6, 8)), rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    a = compute_scores(f, text, protos, logit_scale=20.0)
    b = compute_scores(f * 7.0, text * 0.1, protos * 30.0, logit_scale=20.0)
    for name, value in a.as_dict().items():
        np.testing.assert_allclose(getattr(b, name), value, rtol=1e-12, atol=1e-12, err_msg=name)


def test_float64_breaks_float32_msp_ties() -> None:
    """Top-2 logit gaps of 20 and 25 at s = 100: float32 MSP is exactly 1.0 for both."""
    gaps = np.array([0.20, 0.25])  # cosine gaps
    # Unit vectors (a, b) with a - b = gap: solve a - b = g, a^2 + b^2 = 1.
    a = (gaps + np.sqrt(2.0 - gaps**2)) / 2.0
    b = a - gaps
    f = np.stack([a, b], axis=1).astype(np.float32)
    logits32 = (100.0 * f.astype(np.float32)) @ np.eye(2, dtype=np.float32)
    e32 = np.exp(logits32 - logits32.max(axis=1, keepdims=True))
    msp32 = (e32 / e32.sum(axis=1, keepdims=True)).max(axis=1)
    assert msp32.dtype == np.float32
    assert msp32[0] == msp32[1] == np.float32(1.0)  # the float32 tie

    sc = compute_scores(f, np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32),
                        logit_scale=np.float32(100.0))
    assert sc.msp.dtype == np.float64
    fn = f.astype(np.float64) / np.linalg.norm(f.astype(np.float64), axis=1, keepdims=True)
    expected = 1.0 / (1.0 + np.exp(-100.0 * (fn[:, 0] - fn[:, 1])))
    np.testing.assert_allclose(sc.msp, expected, rtol=0, atol=1e-15)
    assert sc.msp[0] < sc.msp[1] < 1.0  # float64 keeps them apart, in the right order


# --------------------------------------------------------------------------- container


def test_named_and_as_dict() -> None:
    rng = np.random.default_rng(3)
    sc = compute_scores(rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=(5, 3)),
                        logit_scale=10.0)
    assert list(sc.named()) == list(SCORE_NAMES)
    assert set(sc.as_dict()) == {f.name for f in dataclasses.fields(TrustScores)}
    for name, ns in sc.named().items():
        assert ns.confidence is getattr(sc, name)
        expected = sc.pred_star if name == "trustvlm_star" else sc.pred
        assert ns.pred is expected
    np.testing.assert_array_equal(sc.proto_sim, sc.s_ii)
    with pytest.raises(KeyError, match="unknown score 'bogus'"):
        sc.prediction_for("bogus")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.msp = sc.msp  # type: ignore[misc]


def test_score_names_order() -> None:
    assert SCORE_NAMES == ("msp", "max_logit", "energy", "neg_entropy", "doctor", "s_ii",
                           "trustvlm", "trustvlm_star")


def test_empty_batch() -> None:
    sc = compute_scores(np.zeros((0, 3)), np.eye(3), np.eye(3), logit_scale=100.0)
    for name, value in sc.as_dict().items():
        assert value.shape == (0,), name


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("f", "text", "protos", "match"),
    [
        (np.ones((2, 3)), np.eye(2), np.eye(2),
         r"embedding size mismatch: image_embeddings has D=3, expected D=2"),
        (np.ones((2, 2)), np.eye(3)[:, :2] + 1, np.eye(2),
         r"class count mismatch: text_prototypes has 3 classes, image_prototypes has 2"),
        (np.ones((2, 2)), np.eye(2), np.ones((2, 3)),
         r"embedding size mismatch: text_prototypes has D=2, image_prototypes has D=3"),
        (np.ones(2), np.eye(2), np.eye(2), r"image_embeddings must be 2-D, got 1-D"),
        (np.ones((1, 2)), np.ones(2), np.eye(2), r"text_prototypes must be 2-D"),
        (np.ones((1, 2)), np.zeros((0, 2)), np.zeros((0, 2)), r"at least 1 class"),
        (np.array([[1.0, np.nan]]), np.eye(2), np.eye(2), r"image_embeddings contains 1 NaN/inf"),
        (np.array([[0.0, 0.0]]), np.eye(2), np.eye(2), r"image_embeddings has 1 zero-norm"),
        (np.ones((1, 2)), np.eye(2), np.array([[1.0, 0.0], [0.0, 0.0]]),
         r"image_prototypes has 1 zero-norm"),
    ],
)
def test_compute_scores_rejects_bad_shapes_and_values(f, text, protos, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_scores(f, text, protos, logit_scale=100.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logit_scale": 0.0}, r"logit_scale must be > 0, got 0.0"),
        ({"logit_scale": float("nan")}, r"logit_scale must be finite"),
        ({"logit_scale": [1.0, 2.0]}, r"logit_scale must be a scalar, got shape \(2,\)"),
        ({"logit_scale": 100.0, "lam": -0.1}, r"lam must be >= 0, got -0.1"),
        ({"logit_scale": 100.0, "temperature": 0.0}, r"temperature must be > 0"),
    ],
)
def test_compute_scores_rejects_bad_scalars(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_scores(np.ones((1, 2)), EYE2, EYE2, **kwargs)
