"""How well each typicality score keeps out frames the model has never seen (the out-of-distribution gate).

    python -m trustvlm.benchmarks.ood_gate --artifacts artifacts/demo_fmnist [--rate 0.01] [--json out.json]

In-distribution: the demo's camera (Fashion-MNIST through the ``low_light`` shift; calibration images
with the noise seeds of :mod:`trustvlm.pipelines.calibration_set`, test images with the stream's seeds).
Exactly as ``trustvlm calibrate`` does on that camera: 16 shots per class, the rest split in two
seeded halves; the trust score's lambda is chosen on the first half and its SGR threshold on the
second; each gate is fitted and set as ``trustvlm calibrate`` sets it
(:func:`trustvlm.calibration.ood_gate.fit_calibration_gate`: fitted on the shots + a seeded half of the
rest, its threshold set on the other half at the false-reject rate; the cosine baselines' thresholds on
a half of the rest). Out of distribution: every frame of OpenCV's ``vtest.avi`` (street scene,
used for choosing), ``tree.avi`` and ``Megamind.avi`` (reported, never used for choosing), JPEG
quality 90 as ``trustvlm source`` sends them; 200 frames of uniform random noise; 256 uniform grey
frames (levels 0..255).

Prints, per score, the share of each source's frames that pass the gate, the in-distribution
false rejects on the 10,000 fresh test frames, and the in-domain coverage (frames accepted by
gate and trust threshold) against the coverage without a gate; then the frames the service would
accept (gate passed and trust score over its threshold).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from trustvlm.calibration.calibrate import choose_score_lambda, open_encoders, split_held_out
from trustvlm.calibration.image_prototypes import encode_images, prototypes_from_embeddings
from trustvlm.calibration.numerics import l2_normalize
from trustvlm.calibration.ood_gate import conformal_threshold, fit_calibration_gate, frame_features
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.text_prototypes import build_text_prototypes
from trustvlm.calibration.threshold_selection import select_threshold
from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.pipelines.calibration_set import CALIBRATION_SEED_OFFSET
from trustvlm.pipelines.captures import degrade
from trustvlm.runtime.decode.preprocess import preprocess_batch

VIDEO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
VIDEOS = {"vtest": "vtest.avi", "tree": "tree.avi", "megamind": "Megamind.avi"}
SOURCES = ("vtest", "tree", "megamind", "noise", "grey")
#: Candidates: name -> (title, components of the Mahalanobis gate, or None for a baseline).
CANDIDATES = {
    "cos_image": ("max cosine to the image prototypes", None),
    "cos_text": ("max cosine to the text prototypes", None),
    "embedding": ("class-conditional Mahalanobis, shared covariance, on the embedding", ("embedding",)),
    "frame": ("class-conditional Mahalanobis on 11 frame statistics", ("frame",)),
    "embedding+frame": ("both, per-component conformal cuts at rate / 2 (the default)", ("embedding", "frame")),
}


def read_video(path: Path, quality: int = 90, limit: int | None = None) -> list[np.ndarray]:
    """Every frame of `path` (the first `limit`) as RGB after a JPEG round trip at `quality` (what the source sends)."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while limit is None or len(frames) < limit:
        ok, bgr = capture.read()
        if not ok:
            break
        _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        frames.append(cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise FileNotFoundError(f"no frames in {path}: apt-get install opencv-doc")
    return frames


def out_of_domain_frames(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The out-of-distribution sources of the module docstring, as RGB frames."""
    rng = np.random.default_rng(seed)
    frames = {name: read_video(VIDEO_DIR / file) for name, file in VIDEOS.items()}
    frames["noise"] = list(rng.integers(0, 256, (200, 240, 320, 3), dtype=np.uint8))
    frames["grey"] = [np.full((240, 320, 3), level, np.uint8) for level in range(256)]
    return frames


def camera_images(shift: str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A Fashion-MNIST split (its first `limit` images) through the degraded camera, with its seeds (RGB, labels,
    class names)."""
    data = load_split(split)
    offset = CALIBRATION_SEED_OFFSET if split == "calib" else 0
    images = np.stack([degrade(image, shift, offset + i) for i, image in enumerate(data.images[:limit])])
    return to_rgb(images), data.labels[:limit], tuple(data.class_names)


def demo_shots(labels: np.ndarray, classes: int, k: int, seed: int) -> np.ndarray:
    """The shots :func:`trustvlm.pipelines.calibration_set.write_camera_calibration_set` draws (``C x k``)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(np.flatnonzero(labels == c), k, replace=False)) for c in range(classes)])


def encode(encoders, images) -> tuple[np.ndarray, np.ndarray]:
    """(raw embeddings, frame statistics) of RGB images."""
    embeddings = encode_images(encoders.image, images, encoders.preprocess)
    stats = np.concatenate([frame_features(preprocess_batch(images[i:i + 512], encoders.preprocess))
                            for i in range(0, len(images), 512)])
    return embeddings, stats


def run(artifacts: Path, shift: str = "low_light", k: int = 16, seed: int = 0, rate: float = 0.01,
        alpha: float = 0.05, delta: float = 0.1) -> dict:
    """Measure every candidate (module docstring); return the numbers."""
    encoders = open_encoders(artifacts)
    scale = float(encoders.manifest["logit_scale"])
    calib_images, calib_labels, class_names = camera_images(shift, "calib")
    test_images, test_labels, _ = camera_images(shift, "test")
    shots = demo_shots(calib_labels, len(class_names), k, seed)
    rest = np.setdiff1d(np.arange(len(calib_labels)), shots.reshape(-1))
    lambda_part, threshold_part = split_held_out(rest, seed)

    calib_emb, calib_frames = encode(encoders, calib_images)
    test_emb, test_frames = encode(encoders, test_images)
    ood = {name: encode(encoders, np.stack(frames)) for name, frames in out_of_domain_frames(seed).items()}
    text = build_text_prototypes(artifacts, class_names, ["a photo of a {}."]).astype(np.float32).astype(np.float64)
    image = prototypes_from_embeddings(calib_emb, shots).astype(np.float32)
    image = image.astype(np.float64)
    choice = choose_score_lambda("trustvlm", calib_emb[lambda_part], calib_labels[lambda_part], text, image, scale)
    held = compute_scores(calib_emb[threshold_part], text, image, scale, choice.lam)
    trust = select_threshold(held.trustvlm, held.pred == calib_labels[threshold_part], alpha, delta)

    def kappa(embeddings):
        return compute_scores(embeddings, text, image, scale, choice.lam).trustvlm

    def cosine_typicality(embeddings, prototypes):
        return (l2_normalize(embeddings, axis=1) @ l2_normalize(prototypes, axis=1).T).max(axis=1)

    test_accept = kappa(test_emb) >= trust.threshold
    results = {"rate": rate, "lambda": choice.lam, "trust_threshold": trust.threshold,
               "coverage_without_gate": float(test_accept.mean()), "frames": {n: len(v[0]) for n, v in ood.items()},
               "accepted_without_gate": {n: int((kappa(e) >= trust.threshold).sum()) for n, (e, _) in ood.items()},
               "candidates": {}}
    for name, (title, components) in CANDIDATES.items():
        if components is None:
            prototypes = image if name == "cos_image" else text
            score = lambda e, f, p=prototypes: cosine_typicality(e, p)  # noqa: E731
            threshold, _ = conformal_threshold(score(calib_emb[rest[len(rest) // 2:]], None), rate)
        else:
            gate, _ = fit_calibration_gate("on", rate, calib_emb, calib_images, encoders.preprocess, calib_labels,
                                           shots, rest, seed, components)
            score, threshold = gate.typicality, gate.info.threshold
        test_pass = score(test_emb, test_frames) >= threshold
        entry = {"title": title, "test_false_reject": float(1 - test_pass.mean()),
                 "coverage": float((test_pass & test_accept).mean()), "pass": {}, "accepted": {}}
        for source, (embeddings, stats) in ood.items():
            passing = score(embeddings, stats) >= threshold
            entry["pass"][source] = float(passing.mean())
            entry["accepted"][source] = int((passing & (kappa(embeddings) >= trust.threshold)).sum())
        results["candidates"][name] = entry
    return results


def gate_cost(artifacts: Path, bundle_dir: Path, batches: tuple[int, ...] = (1, 8), repeats: int = 200) -> list[str]:
    """Median time per run of the image encoder, the trust head and the gate on one thread, side by side."""
    import time  # noqa: PLC0415

    from trustvlm.contract.bundle import load_bundle  # noqa: PLC0415
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder  # noqa: PLC0415

    bundle = load_bundle(bundle_dir, artifacts)
    if bundle.ood_gate_path is None:
        raise ValueError(f"{bundle_dir} has no out-of-distribution gate")
    encoder = open_encoders(artifacts, threads=1).image
    head, gate = (OnnxEncoder(path, threads=1) for path in (bundle.trust_head_path, bundle.ood_gate_path))
    size = int(bundle.info.preprocess["size"])
    lines = ["| batch | image encoder | trust head | out-of-distribution gate | gate / encoder |",
             "|---:|---:|---:|---:|---:|"]
    for batch in batches:
        pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        embedding = encoder.encode(pixels)
        runs = {"encoder": lambda: encoder.encode(pixels),
                "head": lambda: head.session.run(None, {"embedding": embedding}),
                "gate": lambda: gate.session.run(None, {"pixels": pixels, "embedding": embedding})}
        times = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved, so a busy machine slows all three alike
            for name, call in runs.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        ms = {name: 1000 * float(np.median(values)) for name, values in times.items()}
        lines.append(f"| {batch} | {ms['encoder']:.3f} ms | {ms['head']:.3f} ms | {ms['gate']:.3f} ms | "
                     f"{ms['gate'] / ms['encoder']:.2f} |")
    return lines


def format_table(results: dict) -> list[str]:
    """The markdown tables of RELIABILITY.md from :func:`run`'s numbers."""
    rate, frames = results["rate"], results["frames"]
    lines = [f"share of frames that pass the gate at {100 * rate:g}% false rejects on held-out calibration images; "
             f"in-domain: 10,000 fresh test frames of the same camera (coverage without a gate "
             f"{100 * results['coverage_without_gate']:.1f}%)", "",
             "| typicality score | " + " | ".join(f"{s} ({frames[s]})" for s in SOURCES)
             + " | in-domain false rejects | in-domain coverage |",
             "|---|" + "---:|" * (len(SOURCES) + 2)]
    for entry in results["candidates"].values():
        lines.append(f"| {entry['title']} | " + " | ".join(f"{100 * entry['pass'][s]:.1f}%" for s in SOURCES)
                     + f" | {100 * entry['test_false_reject']:.2f}% | {100 * entry['coverage']:.1f}% |")
    lines += ["", "frames the service would accept (gate passed and trust score over its threshold):", "",
              "| gate | " + " | ".join(SOURCES) + " |", "|---|" + "---:|" * len(SOURCES),
              "| none | " + " | ".join(f"{results['accepted_without_gate'][s]} of {frames[s]}" for s in SOURCES) + " |"]
    for entry in results["candidates"].values():
        lines.append(f"| {entry['title']} | " + " | ".join(f"{entry['accepted'][s]} of {frames[s]}" for s in SOURCES)
                     + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.ood_gate", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--shift", default="low_light", help="the in-domain camera (a calibration.shifts name)")
    parser.add_argument("--rate", type=float, default=0.01, help="false-reject rate on held-out calibration images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shots, the halves and the noise frames")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--cost", type=Path, default=None, metavar="BUNDLE",
                        help="instead: time the gate of this bundle against the encoder and the trust head")
    args = parser.parse_args(argv)
    if args.cost is not None:
        print("\n".join(gate_cost(args.artifacts, args.cost)))
        return 0
    results = run(args.artifacts, args.shift, seed=args.seed, rate=args.rate)
    print("\n".join(format_table(results)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
