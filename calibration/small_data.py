"""Too few images for what `calibrate` or `eval` is asked to do: refused in one line before any image is encoded.

From the labels alone (:func:`draw_checked_shots`):

* a class with fewer than k shot candidates (:func:`~trustvlm.calibration.image_prototypes.sample_shots`);
* with lambda ``auto`` (and so the score choice and the fused scores, fitted on the lambda half),
  fewer than :data:`MIN_AUTO_HELD_OUT` held-out images: half choose lambda, half select the threshold;
* with a fixed lambda, no held-out image to select the threshold on;
* with ``--ood-gate on``, too few held-out images for half of them to set the gate's false-reject rate
  (``auto`` writes no gate then and says so; ``off`` needs none).

Each message says what is missing and what to do (fewer shots, more images, a fixed ``--lam``,
``--ood-gate off``, ...). An infeasible threshold is not refused: the bundle says "no feasible threshold".
"""

from __future__ import annotations

import numpy as np

from trustvlm.calibration.image_prototypes import sample_shots
from trustvlm.calibration.ood_gate import (DEFAULT_COMPONENTS, DEFAULT_FALSE_REJECT_RATE, gate_threshold_count,
                                          min_threshold_images)
from trustvlm.calibration.pools import LabelledPool

#: Held-out images lambda ``auto`` needs: half choose lambda (and the score), half select the threshold.
MIN_AUTO_HELD_OUT = 8


def check_held_out(count: int, lam, split_file: bool = False, fixed_lambda_hint: bool = True) -> None:
    """ValueError in one line: too few held-out images after the shots for lambda (`lam` "auto") and a threshold.

    Args:
        count: Held-out images (the pool's images that are not shots; a split file's "val" rows).
        lam: ``"auto"`` or a fixed lambda.
        split_file: The held-out images are a split file's "val" rows (fewer shots do not add any).
        fixed_lambda_hint: Suggest a fixed ``--lam`` (calibrate; eval always chooses lambda too).
    """
    more = "add rows to the split file's 'val'" if split_file else "lower k or add images"
    if lam == "auto" and count < MIN_AUTO_HELD_OUT:
        fixed = ", or fix lambda (--lam 1) to select the threshold on all of them" if fixed_lambda_hint else ""
        raise ValueError(f"only {count} held-out image(s) after the shots: too few to choose lambda and a threshold "
                         f"(at least {MIN_AUTO_HELD_OUT}: half for lambda, half for the threshold); {more}{fixed}")
    if lam != "auto" and count < 1:
        raise ValueError(f"no held-out image after the shots to select a threshold on; {more}")


def check_gate_images(mode: str, rate: float, count: int, components: int = len(DEFAULT_COMPONENTS)) -> None:
    """ValueError in one line when ``--ood-gate on`` cannot be set on half of `count` held-out images."""
    if mode != "on":
        return
    needed = min_threshold_images(rate, components)
    if gate_threshold_count(count) < needed:
        raise ValueError(f"--ood-gate on needs at least {2 * needed - 1} held-out images after the shots (half of "
                         f"them, {needed}, set its {100 * rate:g}% false-reject rate over {components} components), "
                         f"but there are {count}; add images, raise --ood-false-reject-rate, or use --ood-gate off "
                         "(or auto: no gate when too few)")


def draw_checked_shots(pool: LabelledPool, k: int, seed: int, lam="auto", ood_gate: str = "off",
                       ood_false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE,
                       fixed_lambda_hint: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The seeded ``C x k`` shots and the sorted held-out indices of `pool`, or one refusal (module docstring).

    Raises:
        ValueError: k < 1, a class with fewer than k shot candidates, too few held-out images for
            lambda and the threshold, or for the gate with ``ood_gate="on"``.
    """
    candidates = pool.shot_candidates()
    shots = candidates[sample_shots(pool.labels[candidates], len(pool.class_names), k, seed, pool.class_names)]
    rest = pool.held_out(shots)
    check_held_out(len(rest), lam, pool.held_out_pool is not None, fixed_lambda_hint)
    check_gate_images(ood_gate, ood_false_reject_rate, len(rest))
    return shots, rest
