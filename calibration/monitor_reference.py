"""The guarantee monitor's reference sample of a calibration run (:class:`~trustvlm.contract.monitor_reference.MonitorReference`).

The runtime monitor ranks each thinned frame's served score and gate typicality among these values, so they
must come from images exchangeable with the camera's frames and independent of what made the statistics:

* not the shots (their embeddings are inside their own prototypes);
* not the lambda half of the held-out images (with ``lam auto`` it chose lambda, T and the fused scores, so
  the score function depends on it);
* not the gate's fit half (its class means and covariances).

What is left is the threshold half of the held-out images that is also in the gate's threshold half (about a
quarter of the held-out images with ``lam auto`` and a gate; half with one of the two; all of them with
neither). The accept threshold and the gate's cuts were set on these same images; the monitor's statistics
are the score and the typicality themselves, not the decisions, which leaves one dependence (the
typicality's scales, see the contract module).
"""

from __future__ import annotations

import numpy as np

from trustvlm.calibration.ood_gate import OodGate, gate_rows, image_frame_features
from trustvlm.contract.monitor_reference import MIN_REFERENCE_ROWS, MonitorReference

__all__ = ["reference_rows", "monitor_reference"]


def reference_rows(threshold_part: np.ndarray, shots: np.ndarray, rest: np.ndarray, seed: int,
                   gated: bool) -> np.ndarray:
    """The held-out rows of the reference sample: the threshold part, less the gate's fit half when there is a gate."""
    rows = np.sort(np.asarray(threshold_part))
    if gated:
        rows = np.intersect1d(rows, gate_rows(shots, rest, seed)[1])
    return rows


def monitor_reference(scores: np.ndarray, rows: np.ndarray, gate: OodGate | None, embeddings: np.ndarray, images,
                      preprocess) -> tuple[MonitorReference | None, str]:
    """The reference sample of `rows`, or None with a one-line note when there are too few of them.

    Args:
        scores: The served score of each row (same order as `rows`).
        rows: Pool rows of the sample (:func:`reference_rows`).
        gate: The bundle's gate (None: no typicality is recorded).
        embeddings: ``N x D`` raw image embeddings of the pool.
        images: The pool's images (the gate's frame statistics are computed from the rows' images).
        preprocess: The image encoder's preprocessing.
    """
    if len(rows) < MIN_REFERENCE_ROWS:
        return None, (f"no guarantee monitor: {len(rows)} held-out images are left for its reference sample (need "
                      f"{MIN_REFERENCE_ROWS}; add images)")
    typicality = None
    if gate is not None:
        frames = image_frame_features([images[int(r)] for r in rows], preprocess)
        typicality = gate.typicality(embeddings[rows], frames)
    source = ("held-out images of the threshold half" + (", outside the gate's fit half" if gate is not None else ""))
    return MonitorReference.from_values(source, score=np.asarray(scores, dtype=np.float64), typicality=typicality), ""
