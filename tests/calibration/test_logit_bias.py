"""SigLIP's logit bias: logits = scale * cos + bias. The bias cancels in the softmax over classes.

The trust head and the float64 reference take the model's own logit scale and leave the bias out:
every score they compute from probabilities (MSP, kappa, kappa*, entropy, DOCTOR, top-k
probabilities) and every prediction is the same with the bias; the raw-logit scores of the
reference (max_logit, energy) move by exactly the bias for every sample, so their ranking does not
change. A per-class sigmoid (SigLIP's training objective) is a different score: it depends on the
bias and ranks like max_logit, not like MSP; none is offered.
"""

import numpy as np
import onnxruntime as ort
import pytest

from trustvlm.calibration.numerics import l2_normalize, logsumexp, softmax
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.trust_head import build_trust_head

#: (logit scale, logit bias): open_clip's SigLIP initialization (1 / 0.07, -10), and values of the
#: order of a trained SigLIP's (the exact pretrained values are not read here).
SCALE_BIAS = [(1 / 0.07, -10.0), (110.0, -16.5)]


def problem(seed=0, batch=64, classes=10, dim=32):
    rng = np.random.default_rng(seed)
    f = l2_normalize(rng.normal(size=(batch, dim)))
    text = l2_normalize(rng.normal(size=(classes, dim)))
    image = l2_normalize(text + 0.5 * rng.normal(size=(classes, dim)))
    return f, text, image


@pytest.mark.parametrize("scale, bias", SCALE_BIAS)
def test_bias_cancels_in_every_probability_score_of_the_reference(scale, bias):
    f, text, image = problem()
    lam = 1.0
    scores = compute_scores(f, text, image, scale, lam)
    logits = scale * f @ text.T + bias  # SigLIP's logits, bias included
    p = softmax(logits, axis=1)
    pred = np.argmax(logits, axis=1)
    s_ii = np.sum(f * image[pred], axis=1)
    np.testing.assert_array_equal(scores.pred, pred)
    np.testing.assert_allclose(scores.msp, p.max(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.trustvlm, p.max(axis=1) + lam * s_ii, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.neg_entropy, np.sum(p * np.log(p), axis=1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(scores.doctor, np.sum(p ** 2, axis=1), rtol=0, atol=1e-12)
    q = p + lam * softmax(f @ image.T / 0.01, axis=1)
    np.testing.assert_array_equal(scores.pred_star, np.argmax(q, axis=1))


@pytest.mark.parametrize("scale, bias", SCALE_BIAS)
def test_raw_logit_scores_move_by_the_bias_and_keep_their_ranking(scale, bias):
    f, text, image = problem(seed=1)
    scores = compute_scores(f, text, image, scale)
    logits = scale * f @ text.T + bias
    np.testing.assert_allclose(scores.max_logit + bias, logits.max(axis=1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(scores.energy + bias, logsumexp(logits, axis=1), rtol=0, atol=1e-10)
    for name in ("max_logit", "energy"):
        unbiased = getattr(scores, name)
        assert np.array_equal(np.argsort(unbiased, kind="stable"), np.argsort(unbiased + bias, kind="stable"))


@pytest.mark.parametrize("scale, bias", SCALE_BIAS)
def test_trust_head_with_the_model_scale_matches_the_biased_softmax(scale, bias):
    f, text, image = problem(seed=2)
    lam = 0.7
    head = build_trust_head(text, image, logit_scale=scale, lam=lam, top_k=3)
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"embedding": f.astype(np.float32)})))
    p = softmax(scale * f @ text.T + bias, axis=1)
    pred = np.argmax(p, axis=1)
    np.testing.assert_array_equal(out["pred"], pred)
    np.testing.assert_allclose(out["msp"], p.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(out["kappa"], p.max(axis=1) + lam * np.sum(f * image[pred], axis=1), atol=1e-5)
    np.testing.assert_allclose(out["topk_probs"], -np.sort(-p, axis=1)[:, :3], atol=1e-5)


def test_a_per_class_sigmoid_is_a_different_score():
    f, text, image = problem(seed=3, batch=256)
    scale = 1 / 0.07
    logits = scale * f @ text.T
    msp = compute_scores(f, text, image, scale).msp
    sigmoid_max = {bias: (1 / (1 + np.exp(-(logits + bias)))).max(axis=1) for bias in (-10.0, -16.5)}
    assert not np.allclose(sigmoid_max[-10.0], sigmoid_max[-16.5]), "depends on the bias"
    order = np.argsort(sigmoid_max[-10.0], kind="stable")
    assert np.array_equal(order, np.argsort(logits.max(axis=1), kind="stable")), "ranks like max_logit"
    assert not np.array_equal(order, np.argsort(msp, kind="stable")), "not like MSP"
