"""The artifacts the benchmarks run on, in their own folder (default ``artifacts/bench``).

* ``clip_vitb32``: the real ViT-B/32 architecture with random-init weights (same cost as the real
  weights), exported with ``trustvlm export --precision int8``: fp32 encoders plus the int8 image
  encoder, every parity gate passed.
* ``demo_fmnist``: the embedded demo model, same export: its int8 gates include the trust gate,
  and its fast encoders time calibration without the encoder dominating.
* a prototype bundle for ``clip_vitb32`` (what ``trustvlm serve`` needs): text prototypes of the
  ten Fashion-MNIST class names from the exported text encoder, image prototypes from 2 shots per
  class, and a hand-set threshold (the median kappa of the shots). With random weights its
  decisions mean nothing; it exists to time the service.

An export that is present (its manifest has the precisions asked for) is reused; the exports go
through the ``trustvlm export`` command, in a subprocess, with its exit code checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from trustvlm.contract.manifest import ArtifactError, encoder_path, read_manifest

BENCH_MODEL = "clip_vitb32"
DEMO_MODEL = "demo_fmnist"
BUNDLE_SHOTS_PER_CLASS = 2


class BenchSetupError(RuntimeError):
    """An export or bundle the benchmarks need could not be made."""


def has_export(artifacts_dir: Path, precisions: tuple[str, ...]) -> bool:
    """True when `artifacts_dir` holds a readable export with every one of `precisions`, files intact."""
    try:
        manifest = read_manifest(artifacts_dir)
        for precision in precisions:
            encoder_path(artifacts_dir, manifest, "image", precision)
    except (ArtifactError, KeyError, OSError):
        return False
    return True


def ensure_export(root: Path, model: str, weights: str | None, precision: str = "int8",
                  log=print) -> Path:
    """``root/model`` with fp32 and `precision` encoders, exporting it when absent.

    Raises:
        BenchSetupError: The export command failed (its output ends the message).
    """
    folder = root / model
    if has_export(folder, ("fp32", precision)):
        return folder
    command = [sys.executable, "-m", "trustvlm", "export", "--model", model, "--precision", precision,
               "--output", str(root)]
    if weights:
        command += ["--weights", weights]
    log(f"exporting {model} ({precision}) into {root}: {' '.join(command[1:])}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchSetupError(f"`{' '.join(command[2:])}` exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return folder


def ensure_bundle(artifacts_dir: Path, bundle_dir: Path | None = None, threads: int | None = None) -> Path:
    """A prototype bundle for `artifacts_dir` (see the module docstring), built when absent or stale."""
    from trustvlm.contract.bundle import BundleError, load_bundle  # noqa: PLC0415

    bundle_dir = bundle_dir or artifacts_dir / "bundle"
    try:
        load_bundle(bundle_dir, artifacts_dir)
        return bundle_dir
    except (BundleError, ArtifactError, OSError, ValueError):
        pass
    return build_hand_set_bundle(artifacts_dir, bundle_dir, threads)


def build_hand_set_bundle(artifacts_dir: Path, bundle_dir: Path, threads: int | None = None, seed: int = 0) -> Path:
    """Write the benchmark bundle of `artifacts_dir` (text prototypes, 2-shot image prototypes, median threshold);
    `seed` picks the shots (another seed, another bundle of the same kind)."""
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415
    from trustvlm.contract.bundle import BundleInfo, engine_sha256  # noqa: PLC0415
    from trustvlm.calibration.image_prototypes import encode_images, sample_shots  # noqa: PLC0415
    from trustvlm.contract.threshold import ThresholdChoice  # noqa: PLC0415
    from trustvlm.calibration.numerics import l2_normalize  # noqa: PLC0415
    from trustvlm.calibration.scores import compute_scores  # noqa: PLC0415
    from trustvlm.calibration.text_prototypes import build_text_prototypes  # noqa: PLC0415
    from trustvlm.data.fashion_mnist import CLASS_NAMES, load_split, to_rgb  # noqa: PLC0415
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder  # noqa: PLC0415
    from trustvlm.runtime.decode.preprocess import PreprocessConfig  # noqa: PLC0415

    manifest = read_manifest(artifacts_dir)
    template = "a photo of a {}."
    text = build_text_prototypes(artifacts_dir, CLASS_NAMES, [template])
    calib = load_split("calib")
    shots = sample_shots(calib.labels, len(CLASS_NAMES), BUNDLE_SHOTS_PER_CLASS, seed=seed)
    encoder = OnnxEncoder(encoder_path(artifacts_dir, manifest, "image"), threads=threads)
    embeddings = encode_images(encoder, to_rgb(calib.images[shots.reshape(-1)]),
                               PreprocessConfig.from_dict(manifest["preprocess"]))
    image = l2_normalize(l2_normalize(embeddings, axis=1).reshape(*shots.shape, -1).mean(axis=1), axis=1)
    kappa = compute_scores(embeddings, text, image, float(manifest["logit_scale"]), lam=1.0).trustvlm
    threshold = ThresholdChoice(threshold=float(np.median(kappa)), alpha=0.05, delta=0.1, coverage=0.5,
                                empirical_risk=float("nan"), risk_upper_bound=float("nan"),
                                n_calibration=int(kappa.size), feasible=True,
                                method="benchmark: median kappa of the shots (hand-set, no guarantee)")
    info = BundleInfo(
        model=manifest["model"], architecture=manifest["architecture"], weights_id=manifest["weights"]["id"],
        precision="fp32", engine_sha256=engine_sha256(manifest, "fp32"), preprocess=manifest["preprocess"],
        logit_scale=float(manifest["logit_scale"]), class_names=tuple(CLASS_NAMES), template_set="paper",
        templates=(template,), prompts=tuple((template.format(c),) for c in CLASS_NAMES),
        image_prototype_encoder=encoder.path.name, k=BUNDLE_SHOTS_PER_CLASS, seed=seed,
        shots={"source": "fashion-mnist/calib", "indices": [int(i) for i in calib.indices[shots.reshape(-1)]]},
        lam=1.0, lam_method="paper", temperature=0.01, score="trustvlm", threshold=threshold,
        selection={"note": "benchmark bundle: threshold hand-set, not selected with a risk guarantee"})
    write_bundle(bundle_dir, text, image, info)
    return bundle_dir
