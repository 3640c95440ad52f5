"""Writing prototype bundles (the format and its readers are :mod:`trustvlm.contract.bundle`).

:func:`write_bundle` builds the trust head from the prototypes (onnx, which a bundle reader does
not need) and publishes ``prototypes.npz``, ``trust_head.onnx`` (with a fitted out-of-distribution gate,
``ood_gate.onnx`` too) and ``bundle.json`` atomically.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trustvlm.contract.bundle import BUNDLE_JSON, PROTOTYPES_FILE, TRUST_HEAD_FILE, BundleInfo, PrototypeBundle
from trustvlm.contract.files import sha256_file, staged_folder, write_json_atomic
from trustvlm.contract.ood_gate import OOD_GATE_FILE

if TYPE_CHECKING:
    from trustvlm.calibration.ood_gate import OodGate

__all__ = ["write_bundle"]


def write_bundle(out_dir: str | os.PathLike, text_prototypes: np.ndarray, image_prototypes: np.ndarray,
                 info: BundleInfo, ood_gate: "OodGate | None" = None) -> PrototypeBundle:
    """Write prototypes.npz, trust_head.onnx and bundle.json into `out_dir`, atomically.

    Args:
        out_dir: The bundle folder (replaced as a whole if it exists).
        text_prototypes: ``C x D`` text prototypes (stored as float32).
        image_prototypes: ``C x D`` image prototypes (stored as float32).
        info: Everything but ``files`` and ``created_utc``, which are filled in here (and ``ood_gate``,
            taken from `ood_gate`).
        ood_gate: A fitted out-of-distribution gate, written as ``ood_gate.onnx`` (None: no gate).

    Returns:
        The bundle as written.

    Raises:
        ValueError: On prototype shape mismatch or NaN (from the trust head builder).
        OSError: If the folder cannot be written; nothing is published then.
    """
    text = np.ascontiguousarray(text_prototypes, dtype=np.float32)
    image = np.ascontiguousarray(image_prototypes, dtype=np.float32)
    # onnx is imported only when a bundle is written: reading a bundle's settings stays light.
    from trustvlm.calibration.trust_head import build_trust_head, save_trust_head  # noqa: PLC0415

    head = build_trust_head(text, image, info.logit_scale, info.lam, info.temperature,
                            aux_embedding=info.aux_encoder is not None, fused=info.fused)
    names = [PROTOTYPES_FILE, TRUST_HEAD_FILE]
    if ood_gate is not None:
        from trustvlm.calibration.ood_gate_graph import build_ood_gate_graph  # noqa: PLC0415

        gate_graph = build_ood_gate_graph(ood_gate, int(info.preprocess["size"]), text.shape[1])
        names.append(OOD_GATE_FILE)
    target = Path(out_dir)
    with staged_folder(target) as stage:
        np.savez(stage / PROTOTYPES_FILE, text_prototypes=text, image_prototypes=image)
        save_trust_head(head, stage / TRUST_HEAD_FILE)
        if ood_gate is not None:
            save_trust_head(gate_graph, stage / OOD_GATE_FILE)
        files = {name: sha256_file(stage / name) for name in names}
        info = replace(info, files=files, ood_gate=None if ood_gate is None else ood_gate.info,
                       created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json_atomic(stage / BUNDLE_JSON, info.to_dict())
    return PrototypeBundle(target, text, image, info)

