"""The demo's out-of-distribution line: what the street-scene camera's frames became.

A clothing classifier shown a street scene should act on none of it. The line counts, from the
controller's decision log, the video camera's frames deferred by the bundle's out-of-distribution
gate (reason ``out_of_distribution``), deferred by the trust threshold, and accepted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

__all__ = ["count_camera_reasons", "format_ood_line"]


def count_camera_reasons(log: Path, camera: str) -> Counter:
    """Decisions of `camera` in the controller's JSON-lines decision log, by reason (other events skipped)."""
    reasons: Counter = Counter()
    if not log.exists():
        return reasons
    with log.open() as lines:
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("camera_id") == camera and "reason" in row:
                reasons[row["reason"]] += 1
    return reasons


def format_ood_line(log: Path, camera: str, in_domain_camera: str | None = None) -> str:
    """One line: `camera`'s frames deferred by the gate, deferred otherwise and accepted (and the in-domain cost).

    With `in_domain_camera`, the line also says how many of that camera's frames the gate deferred (the
    false rejects the gate's false-reject rate allows for).
    """
    reasons = count_camera_reasons(log, camera)
    total = sum(reasons.values())
    if not total:
        return f"  out of distribution: no decisions of camera {camera} in {log}"
    accepted, gated = reasons.get("meets_threshold", 0), reasons.get("out_of_distribution", 0)
    others = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())
                       if reason not in ("meets_threshold", "out_of_distribution"))
    gate = (f"deferred {gated} of {total} frames as out_of_distribution" if gated
            else "no frame deferred as out_of_distribution (the bundle has no gate, or it passed them all)")
    line = (f"  out of distribution: {gate}{f' (other deferrals: {others})' if others else ''}; "
            f"accepted {accepted} of {total} ({100 * accepted / total:.1f}%)")
    if in_domain_camera is not None:
        own = count_camera_reasons(log, in_domain_camera)
        if own:
            line += (f"; {in_domain_camera} frames deferred as out_of_distribution: "
                     f"{own.get('out_of_distribution', 0)} of {sum(own.values())}")
    return line
