"""The reduced-decode gate record (``decode_gate.json`` in an artifacts folder), written by ``trustvlm decode-gate``.

Decoding a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain changes the pixels the encoder sees a
little (the resize then starts from fewer samples, and a DCT scale is a box filter where the resize
is antialiased bilinear or bicubic). How much depends on the headroom left to the resize: the
reduced image's short side is at least ``headroom`` x the input size. The gate tries headroom 1,
then 2, and records the first that passes. Like an export's parity record, the gate
measures what that does to this model: embeddings of real frames decoded reduced against the same
frames decoded at full size (cosine), and the top-1 class on a labelled set with both paths. The
service decodes reduced only for an encoder whose record says it passed, for the same encoder file
(sha256) and preprocessing; anything else (no record, failed, another encoder) means full decode.

Format (JSON, ``schema_version`` 1.x)::

    {"schema_version": "1.0", "model": "demo_fmnist", "passed": true,
     "encoders": {"fp32": {"sha256": "...", "passed": true, "min_cosine": 0.9991, "mean_cosine": 0.9998,
                           "top1_agreement": 1.0, "frames": 300, "labelled": 1000, "scales": [2, 4, 8],
                           "headroom": 2, "tried": {"1": {...}, "2": {...}}}},
     "preprocess": {...}, "required": {"min_cosine": 0.995, "min_top1_agreement": 0.99},
     "sources": ["vtest.avi", ...], "created_utc": "..."}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DECODE_GATE_FILE", "DECODE_GATE_SCHEMA_VERSION", "MIN_COSINE", "MIN_TOP1_AGREEMENT", "GateVerdict",
           "read_decode_gate", "check_decode_gate"]

DECODE_GATE_FILE = "decode_gate.json"
DECODE_GATE_SCHEMA_VERSION = "1.0"
#: What reduced decoding must keep: embedding cosine to the full decode, and top-1 agreement with it.
MIN_COSINE = 0.995
MIN_TOP1_AGREEMENT = 0.99


@dataclass(frozen=True)
class GateVerdict:
    """Whether reduced decode may be used for one encoder, and if not, why (one line)."""

    passed: bool
    reason: str
    headroom: int = 0


def read_decode_gate(artifacts_dir: str | os.PathLike) -> dict | None:
    """The gate record of `artifacts_dir`, or None when there is none.

    Raises:
        ValueError: A record that is not JSON or has another major schema version.
    """
    path = Path(artifacts_dir) / DECODE_GATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable decode gate record: {error}") from error
    version = str(data.get("schema_version", "")) if isinstance(data, dict) else ""
    if version.split(".")[0] != DECODE_GATE_SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"{path}: decode gate schema_version {version!r}, expected "
                         f"{DECODE_GATE_SCHEMA_VERSION.split('.')[0]}.x")
    return data


def check_decode_gate(artifacts_dir: str | os.PathLike, precision: str, encoder_sha256: str,
                      preprocess: dict) -> GateVerdict:
    """Did the encoder file `encoder_sha256` (of `precision`), with `preprocess`, pass the reduced-decode gate?"""
    try:
        record = read_decode_gate(artifacts_dir)
    except ValueError as error:
        return GateVerdict(False, str(error))
    where = Path(artifacts_dir) / DECODE_GATE_FILE
    if record is None:
        return GateVerdict(False, f"no {DECODE_GATE_FILE} in {artifacts_dir} (run `trustvlm decode-gate "
                                  f"--artifacts {artifacts_dir}`)")
    entry = record.get("encoders", {}).get(precision)
    if not isinstance(entry, dict):
        return GateVerdict(False, f"{where} has no {precision} encoder")
    if entry.get("sha256") != encoder_sha256 or record.get("preprocess") != preprocess:
        return GateVerdict(False, f"{where} was measured on another {precision} encoder or preprocessing "
                                  "(re-exported since?); run `trustvlm decode-gate` again")
    if entry.get("passed") is not True:
        return GateVerdict(False, f"{where}: the {precision} encoder failed the gate (min cosine "
                                  f"{entry.get('min_cosine')}, top-1 agreement {entry.get('top1_agreement')})")
    headroom = entry.get("headroom", 1)
    if isinstance(headroom, bool) or not isinstance(headroom, int) or headroom < 1:
        return GateVerdict(False, f"{where}: headroom should be an integer >= 1, but got {headroom!r}")
    return GateVerdict(True, f"{where}: passed with headroom {headroom} (min cosine {entry.get('min_cosine'):.4f}, "
                             f"top-1 agreement {entry.get('top1_agreement'):.4f})", headroom)
