"""Open-set measurement of the out-of-distribution gate: classes the bundle was never calibrated on.

    python -m trustvlm.benchmarks.open_set --artifacts artifacts/demo_fmnist [--splits 3] [--json out.json]

The standard open-set protocol on the demo's camera (Fashion-MNIST through the ``low_light`` shift, the
calibration and test images with the seeds of :mod:`trustvlm.benchmarks.ood_gate`): per split, 3 of the
10 classes are held out (chosen with the split's seed) and the bundle is calibrated on the other 7 as
``trustvlm calibrate`` does (16 shots per class; the rest in seeded halves: lambda on the first, the
trust threshold by Learn then Test on the second with the first's scores as its grid; the gate fitted
on the shots + a seeded half of the rest and set on the other half,
:func:`trustvlm.calibration.ood_gate.gate_rows`). A first split keeps all 10 classes (closed set).

Each split's gate is set twice on the very same fit (class means, covariances, rows):

* before: each distance divided by its median on the fit images, one threshold on their maximum at the
  false-reject rate (the rule of bundles calibrated before per-component cuts);
* after: each component's own conformal cut at rate / m, defer iff any distance exceeds its cut
  (:func:`trustvlm.calibration.ood_gate.fit_ood_gate`).

Counted: frames the service would accept (gate passed and trust score over its threshold) among the held-out
classes' test frames, every frame of OpenCV's ``vtest.avi``, ``tree.avi`` and ``Megamind.avi`` (JPEG
quality 90), scikit-learn's 1,797 handwritten digits through the same camera (near domain: same size, grey
levels and camera, other objects), 200 uniform-noise and 256 uniform grey frames; and the in-domain cost on
the known classes' test frames: false rejects, coverage with and without the gate, risk among accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from trustvlm.benchmarks.ood_gate import VIDEO_DIR, VIDEOS, camera_images, demo_shots, encode, read_video
from trustvlm.benchmarks.train_folders import digits
from trustvlm.calibration.calibrate import choose_score_lambda, open_encoders, split_held_out
from trustvlm.calibration.image_prototypes import prototypes_from_embeddings
from trustvlm.calibration.ood_gate import OodGate, conformal_threshold, fit_ood_gate, gate_rows
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.text_prototypes import build_text_prototypes
from trustvlm.calibration.threshold_selection import select_threshold, threshold_grid
from trustvlm.cli_common import positive
from trustvlm.data.fashion_mnist import to_rgb
from trustvlm.pipelines.captures import degrade

SOURCES = ("held-out classes", "vtest", "tree", "megamind", "digits", "noise", "grey")
GATES = ("none", "before", "after")
#: Camera noise seeds of the digits (apart from the test frames' 0.. and the calibration images' 1,000,000..).
DIGIT_SEED_OFFSET = 2_000_000


def unknown_classes(split: int, classes: int, held_out: int) -> tuple[int, ...]:
    """The classes split `split` holds out (split 0: none, the closed set)."""
    if split == 0:
        return ()
    return tuple(sorted(int(c) for c in np.random.default_rng([split, 3]).choice(classes, held_out, replace=False)))


def outside_frames(shift: str, video_frames: int | None, digit_count: int | None, seed: int) -> dict[str, np.ndarray]:
    """RGB frames of every source but the held-out classes (module docstring)."""
    rng = np.random.default_rng(seed)
    frames = {name: np.stack(read_video(VIDEO_DIR / file, limit=video_frames)) for name, file in VIDEOS.items()}
    digit_images = digits()[0][:digit_count]
    frames["digits"] = to_rgb(np.stack([degrade(image, shift, DIGIT_SEED_OFFSET + i)
                                        for i, image in enumerate(digit_images)]))
    frames["noise"] = rng.integers(0, 256, (200, 240, 320, 3), dtype=np.uint8)
    frames["grey"] = np.stack([np.full((240, 320, 3), level, np.uint8) for level in range(256)])
    return frames


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an `outside` score > an `inside` one), ties counted half: how well the score (higher = more atypical)
    tells the two apart at any threshold (0.5: not at all)."""
    if not len(inside) or not len(outside):
        return float("nan")
    ordered = np.sort(inside)
    below = np.searchsorted(ordered, outside, side="left") + np.searchsorted(ordered, outside, side="right")
    return float(below.mean() / (2 * len(ordered)))


def median_rule(gate: OodGate, embeddings: np.ndarray, frames: np.ndarray, fit_rows: np.ndarray,
                threshold_rows: np.ndarray, rate: float):
    """The rule before per-component cuts, on `gate`'s fit: (pass function, threshold in medians, medians)."""
    medians = np.median(gate.raw_distances(embeddings[fit_rows], frames[fit_rows]), axis=0)

    def typicality(e, f):
        return -(gate.raw_distances(e, f) / medians).max(axis=1)

    threshold, _ = conformal_threshold(typicality(embeddings[threshold_rows], frames[threshold_rows]), rate)
    return (lambda e, f: typicality(e, f) >= threshold), -threshold, medians


def run_split(split: int, data: dict, class_names: tuple[str, ...], artifacts: Path, scale: float, *, k: int,
              seed: int, rate: float, alpha: float, delta: float, held_out: int) -> dict:
    """One split's numbers (module docstring)."""
    calib_emb, calib_frames, calib_labels = data["calib"]
    test_emb, test_frames, test_labels = data["test"]
    unknown = unknown_classes(split, len(class_names), held_out)
    known = tuple(c for c in range(len(class_names)) if c not in unknown)
    relabel = np.full(len(class_names), -1)
    relabel[list(known)] = np.arange(len(known))
    rows = np.flatnonzero(relabel[calib_labels] >= 0)
    emb, frames, labels = calib_emb[rows], calib_frames[rows], relabel[calib_labels[rows]]
    shots = demo_shots(labels, len(known), k, seed + split)
    rest = np.setdiff1d(np.arange(len(labels)), shots.reshape(-1))
    lambda_part, threshold_part = split_held_out(rest, seed + split)
    text = build_text_prototypes(artifacts, [class_names[c] for c in known], ["a photo of a {}."])
    text = text.astype(np.float32).astype(np.float64)
    image = prototypes_from_embeddings(emb, shots).astype(np.float32).astype(np.float64)
    choice = choose_score_lambda("trustvlm", emb[lambda_part], labels[lambda_part], text, image, scale)

    def kappa(embeddings):
        return compute_scores(embeddings, text, image, scale, choice.lam)

    held = kappa(emb[threshold_part])
    trust = select_threshold(held.trustvlm, held.pred == labels[threshold_part], alpha, delta,
                             grid=threshold_grid(kappa(emb[lambda_part]).trustvlm))
    fit_rows, gate_threshold_rows = gate_rows(shots, rest, seed + split)
    after = fit_ood_gate(emb, frames, labels, fit_rows, gate_threshold_rows, rate)
    before, before_threshold, medians = median_rule(after, emb, frames, fit_rows, gate_threshold_rows, rate)
    passes = {"none": lambda e, f: np.ones(len(e), bool), "before": before,
              "after": lambda e, f: after.typicality(e, f) >= after.info.threshold}
    in_domain = relabel[test_labels] >= 0
    sources = {"held-out classes": (test_emb[~in_domain], test_frames[~in_domain]), **data["outside"]}
    scores = kappa(test_emb[in_domain])
    accept = scores.trustvlm >= trust.threshold
    correct = scores.pred == relabel[test_labels[in_domain]]
    result = {"split": split, "unknown": [class_names[c] for c in unknown], "lambda": choice.lam,
              "trust_threshold": trust.threshold, "before_threshold_medians": before_threshold,
              "after_cuts_medians": [c.scale / m for c, m in zip(after.components, medians)],
              "in_domain_frames": int(in_domain.sum()), "frames": {s: len(e) for s, (e, _) in sources.items()},
              "auroc_embedding": auroc(*(after.raw_distances(test_emb[m], test_frames[m])[:, 0]
                                         for m in (in_domain, ~in_domain))),
              "auroc_gate": auroc(*(-after.typicality(test_emb[m], test_frames[m]) for m in (in_domain, ~in_domain))),
              "gates": {}}
    for name, passing in passes.items():
        gate_pass = passing(test_emb[in_domain], test_frames[in_domain])
        kept = gate_pass & accept
        entry = {"false_reject": float(1 - gate_pass.mean()), "coverage": float(kept.mean()),
                 "risk": float(1 - correct[kept].mean()) if kept.any() else 0.0, "accepted": {},
                 "held_out_deferred": float(1 - passing(*sources["held-out classes"]).mean()) if split else 0.0}
        for source, (e, f) in sources.items():
            entry["accepted"][source] = int((passing(e, f) & (kappa(e).trustvlm >= trust.threshold)).sum())
        result["gates"][name] = entry
    return result


def run(artifacts: Path, *, shift: str = "low_light", splits: int = 3, held_out: int = 3, k: int = 16,
        seed: int = 0, rate: float = 0.01, alpha: float = 0.05, delta: float = 0.1, calib_limit: int | None = None,
        test_limit: int | None = None, video_frames: int | None = None, digit_count: int | None = None) -> dict:
    """Encode every source once, then measure the closed set and `splits` open-set splits."""
    encoders = open_encoders(artifacts)
    calib_images, calib_labels, class_names = camera_images(shift, "calib", calib_limit)
    test_images, test_labels, _ = camera_images(shift, "test", test_limit)
    data = {"calib": (*encode(encoders, calib_images), calib_labels),
            "test": (*encode(encoders, test_images), test_labels),
            "outside": {name: encode(encoders, frames)
                        for name, frames in outside_frames(shift, video_frames, digit_count, seed).items()}}
    scale = float(encoders.manifest["logit_scale"])
    return {"rate": rate, "alpha": alpha, "delta": delta, "shift": shift,
            "splits": [run_split(split, data, class_names, artifacts, scale, k=k, seed=seed, rate=rate, alpha=alpha,
                                 delta=delta, held_out=held_out) for split in range(splits + 1)]}


def format_table(results: dict) -> list[str]:
    """The markdown table of RELIABILITY.md from :func:`run`'s numbers."""
    first = results["splits"][0]
    titles = {"none": "no gate", "before": "before: max of median-scaled distances, one threshold",
              "after": "after: per-component conformal cuts, Bonferroni"}
    columns = [f"{s} ({first['frames'][s]})" if s != "held-out classes" else s for s in SOURCES]
    lines = [f"frames accepted (gate passed and trust score over its threshold); gate at "
             f"{100 * results['rate']:g}% false rejects, trust threshold at alpha {results['alpha']:g}", "",
             "| held out | gate | " + " | ".join(columns)
             + " | in-domain false rejects | in-domain coverage | risk among accepted |",
             "|---|---|" + "---:|" * (len(SOURCES) + 3)]
    for split in results["splits"]:
        unknown = ", ".join(split["unknown"]) or "none (10 known)"
        for name in GATES:
            entry = split["gates"][name]
            cells = [f"{entry['accepted'][s]} of {split['frames'][s]}" if s == "held-out classes"
                     else str(entry["accepted"][s]) for s in SOURCES]
            if not split["frames"]["held-out classes"]:
                cells[0] = "-"
            lines.append(f"| {unknown} | {titles[name]} | " + " | ".join(cells)
                         + f" | {100 * entry['false_reject']:.2f}% | {100 * entry['coverage']:.1f}% "
                         f"| {100 * entry['risk']:.1f}% |")
    lines += ["", "thresholds in medians of each distance on the fit images (embedding, frame); held-out classes' "
              "test frames the gate defers; AUROC known against held-out classes' test frames:", ""]
    for split in results["splits"]:
        cuts = ", ".join(f"{c:.2f}" for c in split["after_cuts_medians"])
        line = (f"* held out {', '.join(split['unknown']) or 'none'}: before one threshold at "
                f"{split['before_threshold_medians']:.2f}; after cuts at {cuts}")
        if split["unknown"]:
            deferred = [100 * split["gates"][name]["held_out_deferred"] for name in ("before", "after")]
            line += (f"; deferred {deferred[0]:.1f}% before, {deferred[1]:.1f}% after; AUROC embedding distance "
                     f"{split['auroc_embedding']:.3f}, gate {split['auroc_gate']:.3f}")
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.open_set", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--shift", default="low_light", help="the in-domain camera (a calibration.shifts name)")
    parser.add_argument("--splits", type=int, default=3, help="open-set splits after the closed set")
    parser.add_argument("--held-out", type=positive(), default=3, help="classes each open-set split holds out")
    parser.add_argument("--rate", type=float, default=0.01, help="the gate's false-reject rate")
    parser.add_argument("--alpha", type=float, default=0.05, help="the trust threshold's target risk")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shots, halves and noise frames")
    parser.add_argument("--calib-limit", type=positive(), default=None, help="only the first N calibration images")
    parser.add_argument("--test-limit", type=positive(), default=None, help="only the first N test images")
    parser.add_argument("--video-frames", type=positive(), default=None, help="only the first N frames of each video")
    parser.add_argument("--digits", type=positive(), default=None, help="only the first N digits")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = run(args.artifacts, shift=args.shift, splits=args.splits, held_out=args.held_out, seed=args.seed,
                  rate=args.rate, alpha=args.alpha, calib_limit=args.calib_limit, test_limit=args.test_limit,
                  video_frames=args.video_frames, digit_count=args.digits)
    print("\n".join(format_table(results)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
