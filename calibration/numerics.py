"""Numerically stable float64 building blocks of the reference scores (softmax, normalization, checks)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_finite", "as_float64", "check_scalar", "logsumexp", "log_softmax", "softmax", "l2_normalize"]


def check_finite(x: np.ndarray, name: str) -> None:
    """Raises ValueError if ``x`` holds NaN or infinite values."""
    if not np.all(np.isfinite(x)):
        n_bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} contains {n_bad} NaN/inf value(s); expected finite values")


def as_float64(x: object, name: str) -> np.ndarray:
    """Converts ``x`` to a float64 array, raising ValueError on non-numeric input."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from exc
    return arr


def check_scalar(value: object, name: str, *, positive: bool = False) -> float:
    """Returns ``value`` as a finite float, optionally requiring it to be > 0 or >= 0."""
    arr = as_float64(value, name)
    if arr.ndim != 0 and arr.size != 1:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    v = float(arr.reshape(()))
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0.0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if not positive and v < 0.0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable ``log(sum(exp(x)))`` along ``axis`` (reduced away).

    Args:
        x: Finite values.
        axis: Axis to reduce.

    Returns:
        float64 array with ``axis`` removed.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64.

    Args:
        logits: Finite scores.
        axis: Class axis.

    Returns:
        float64 array of ``logits``' shape; every entry is finite.

    Raises:
        ValueError: If ``logits`` holds NaN or inf.
    """
    x = as_float64(logits, "logits")
    check_finite(x, "logits")
    # Stay in the shifted frame: adding the max back and subtracting it again
    # would round the small log-normalizer to the max's ulp.
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (max-subtracted).

    Args:
        logits: Finite scores.
        axis: Class axis.

    Returns:
        float64 probabilities of ``logits``' shape, summing to 1 along ``axis``.

    Raises:
        ValueError: If ``logits`` holds NaN or inf.
    """
    x = as_float64(logits, "logits")
    check_finite(x, "logits")
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def l2_normalize(x: np.ndarray, axis: int = -1, *, name: str = "x") -> np.ndarray:
    """Scales vectors along ``axis`` to unit L2 norm, in float64.

    Each vector is first divided by its largest absolute entry, so neither huge
    (1e200) nor tiny (1e-300) inputs overflow or underflow when squared.

    Args:
        x: Finite input with at least one non-zero entry per vector.
        axis: Axis holding the vector components.
        name: Name used in error messages.

    Returns:
        float64 array of ``x``'s shape with unit-norm vectors.

    Raises:
        ValueError: On NaN/inf input or an all-zero vector.
    """
    arr = as_float64(x, name)
    check_finite(arr, name)
    if arr.size == 0:
        return arr.copy()
    peak = np.max(np.abs(arr), axis=axis, keepdims=True)
    zero = peak == 0.0
    if np.any(zero):
        idx = np.flatnonzero(zero.reshape(-1))[:5].tolist()
        raise ValueError(
            f"{name} has {int(np.count_nonzero(zero))} zero-norm vector(s) along axis {axis} "
            f"(first flat indices {idx}); cannot L2-normalize"
        )
    scaled = arr / peak
    return scaled / np.sqrt(np.sum(scaled * scaled, axis=axis, keepdims=True))
