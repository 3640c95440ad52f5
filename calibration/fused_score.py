"""The fused scores: a regularised logistic model over the trust head's signals (float64 reference and fit).

TrustVLM's ``msp + lambda * S_ii`` adds two signals with one weight. On a strongly degraded camera more
of what the head computes tells right from wrong predictions: the max logit, the entropy, whether the
image-prototype classifier agrees. A fused score weighs them by logistic regression fitted on held-out
calibration images (the lambda half, never the threshold half), with an L2 penalty on the weights of
the standardized features, so a few hundred images suffice and a useless feature gets a small weight.
The score is the model's log-odds that the prediction it rates is right (higher = more confident); the
log-odds, not the probability, so that float32 does not saturate confident images into ties.

``fused`` rates the VLM's prediction, ``fused_star`` TrustVLM*'s corrected one (with its own lambda and
T). Features and parameters: :mod:`trustvlm.contract.fused`. The trust head computes the same in float32
(:mod:`trustvlm.calibration.trust_head`). The fit is Newton's method (iteratively reweighted least
squares) on the penalised log-likelihood, which is strictly convex, so it converges in a few steps to
the optimum that scikit-learn's ``LogisticRegression(C=1 / l2)`` finds (tests use it as the oracle).
"""

from __future__ import annotations

import numpy as np

from trustvlm.calibration.numerics import log_softmax, softmax
from trustvlm.contract.fused import FUSED_FEATURES, FusedModel

__all__ = ["DEFAULT_L2", "fused_features", "fit_logistic", "fit_fused_model", "fused_confidence",
           "cross_fitted_confidence"]

#: L2 weight of the fit (scikit-learn's C = 1).
DEFAULT_L2 = 1.0
_MAX_NEWTON_STEPS = 100


def _take_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, idx[:, None], axis=1)[:, 0]


def fused_features(score: str, logits: np.ndarray, sims: np.ndarray, lam: float = 0.0,
                   temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The features of `score` (``fused`` or ``fused_star``) and the prediction it rates.

    Args:
        score: A key of :data:`trustvlm.contract.fused.FUSED_FEATURES`.
        logits: ``N x C`` scaled VLM logits.
        sims: ``N x C`` cosines of each image to each class's image prototype.
        lam: TrustVLM*'s lambda (``fused_star`` only).
        temperature: TrustVLM*'s prototype softmax temperature (``fused_star`` only), > 0.

    Returns:
        ``(X, pred)``: float64 ``N x F`` features in the order of ``FUSED_FEATURES[score]`` and int64 ``N``.
    """
    if score not in FUSED_FEATURES:
        raise ValueError(f"fused score should be one of {tuple(FUSED_FEATURES)}, but got {score!r}")
    logits, sims = np.asarray(logits, np.float64), np.asarray(sims, np.float64)
    p = softmax(logits, axis=1)
    pred = np.argmax(logits, axis=1).astype(np.int64)
    proto_pred = np.argmax(sims, axis=1).astype(np.int64)
    common = {"max_logit": np.max(logits, axis=1), "neg_entropy": np.sum(p * log_softmax(logits, axis=1), axis=1)}
    if score == "fused":
        values = {**common, "msp": np.max(p, axis=1), "s_ii": _take_rows(sims, pred),
                  "agree_proto": (pred == proto_pred).astype(np.float64)}
    else:
        q = p + lam * softmax(sims / temperature, axis=1)
        rated = np.argmax(q, axis=1).astype(np.int64)
        values = {**common, "q_max": np.max(q, axis=1), "s_star": _take_rows(sims, rated),
                  "p_star": _take_rows(p, rated), "agree_vlm": (rated == pred).astype(np.float64),
                  "agree_proto": (rated == proto_pred).astype(np.float64)}
        pred = rated
    return np.stack([values[name] for name in FUSED_FEATURES[score]], axis=1), pred


def _objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float) -> float:
    z = x @ w
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum(w[1:] ** 2))


def fit_logistic(features: np.ndarray, target: np.ndarray, l2: float = DEFAULT_L2) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method (the intercept is not penalised).

    Minimises ``sum_i log(1 + exp(z_i)) - y_i z_i + l2 / 2 * |coef|^2`` with ``z = features @ coef + b``.

    Args:
        features: ``N x F`` finite features (standardize them first for a meaningful penalty).
        target: ``N`` 0/1 or bool.
        l2: Penalty weight, > 0 (it keeps the optimum finite when the classes separate).

    Returns:
        ``(coef, intercept)``.

    Raises:
        ValueError: On shape mismatch, non-finite features, fewer than 2 rows or ``l2 <= 0``.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(target).astype(np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"fit_logistic needs N x F features and N targets, N >= 2; got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("fit_logistic: features must be finite")
    if not l2 > 0:
        raise ValueError(f"l2 should be > 0, but got {l2!r}")
    design = np.hstack([np.ones((x.shape[0], 1)), x])
    penalty = np.full(design.shape[1], float(l2))
    penalty[0] = 0.0
    w = np.zeros(design.shape[1])
    mean_y = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    w[0] = np.log(mean_y / (1 - mean_y))
    if y.min() == y.max():  # one class only: no finite optimum; a constant score at the clipped base rate
        return np.zeros(x.shape[1]), float(w[0])
    current = _objective(design, y, w, l2)
    for _ in range(_MAX_NEWTON_STEPS):
        prob = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (prob - y) + penalty * w
        hessian = (design * (prob * (1 - prob))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while True:  # step halving keeps every iterate an improvement
            candidate = w - scale * step
            value = _objective(design, y, candidate, l2)
            if value <= current or scale < 1e-8:
                break
            scale *= 0.5
        w, previous, current = candidate, current, value
        if abs(previous - current) <= 1e-13 * max(1.0, abs(current)) and np.max(np.abs(scale * step)) < 1e-9:
            break
    return w[1:], float(w[0])


def fit_fused_model(score: str, logits: np.ndarray, sims: np.ndarray, labels: np.ndarray, lam: float = 0.0,
                    temperature: float = 1.0, l2: float = DEFAULT_L2) -> FusedModel:
    """Fit `score` on labelled calibration images (features standardized on them).

    Args:
        score: ``fused`` or ``fused_star``.
        logits: ``N x C`` scaled VLM logits of the fitting images.
        sims: ``N x C`` image-prototype cosines.
        labels: ``N`` true classes.
        lam: TrustVLM*'s lambda (recorded and used by ``fused_star``; 0 for ``fused``).
        temperature: TrustVLM*'s temperature, > 0.
        l2: Penalty weight.

    Returns:
        The fitted :class:`~trustvlm.contract.fused.FusedModel`.
    """
    x, pred = fused_features(score, logits, sims, lam, temperature)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature (e.g. always agreeing) stays 0
    coef, intercept = fit_logistic((x - mean) / scale, pred == np.asarray(labels), l2)
    return FusedModel(score, FUSED_FEATURES[score], tuple(map(float, mean)), tuple(map(float, scale)),
                      tuple(map(float, coef)), intercept, float(lam) if score == "fused_star" else 0.0,
                      float(temperature), float(l2), int(x.shape[0]))


def fused_confidence(model: FusedModel, logits: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, pred)`` of a fitted fused score: the log-odds that `pred` is right, float64."""
    x, pred = fused_features(model.score, logits, sims, model.lam, model.temperature)
    z = ((x - np.asarray(model.mean)) / np.asarray(model.scale)) @ np.asarray(model.coef) + model.intercept
    return z, pred


def cross_fitted_confidence(score: str, logits: np.ndarray, sims: np.ndarray, labels: np.ndarray,
                            lam: float = 0.0, temperature: float = 1.0, folds: int = 5, seed: int = 0,
                            l2: float = DEFAULT_L2) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold ``(confidence, pred)``: each image scored by a model fitted without it.

    Comparing a fitted score with fixed ones on the images it was fitted on would flatter it; scored
    out of fold, it is compared as it will perform on new images.
    """
    n = len(labels)
    folds = max(2, min(int(folds), n // 2))
    assignment = np.random.default_rng([seed, 2]).permutation(n) % folds
    confidence = np.empty(n)
    pred = np.empty(n, np.int64)
    for fold in range(folds):
        test, train = assignment == fold, assignment != fold
        model = fit_fused_model(score, logits[train], sims[train], labels[train], lam, temperature, l2)
        confidence[test], pred[test] = fused_confidence(model, logits[test], sims[test])
    return confidence, pred
