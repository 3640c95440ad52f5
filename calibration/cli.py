"""`trustvlm calibrate` and `trustvlm eval`: thin argparse layers over calibrate() and the eval harness.

Wire them into the top-level parser with ``add_calibrate_parser(subparsers)`` and
``add_eval_parser(subparsers)``; each sets ``handler`` (``run_calibrate`` / ``run_eval``). Expected
failures (bad input, missing data, mismatched artifacts) become one :class:`trustvlm.cli_common.CliError`
line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trustvlm.cli_common import CliError, help_formatter
from trustvlm.contract.manifest import PRECISIONS
from trustvlm.contract.scores import AUTO_SCORE, SCORES

DEFAULT_ARTIFACTS = Path("artifacts/demo_fmnist")


def _lambda_arg(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}") from error
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from error
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _fixed_lambda_arg(text: str) -> float:
    value = _lambda_arg(text)
    if value == "auto":
        raise argparse.ArgumentTypeError("expected a number >= 0 (the auto-lambda rows are reported beside it)")
    return value


def _expected_errors() -> tuple[type[BaseException], ...]:
    from trustvlm.runtime.scoring.onnx_engine import EngineError  # noqa: PLC0415 - keep `--help` light

    return ValueError, FileNotFoundError, EngineError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS,
                        help="export folder (manifest.json + encoders) of the model")
    parser.add_argument("--k", type=int, default=16, help="shots per class for the image prototypes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shot sampling and held-out split")
    parser.add_argument("--alpha", type=float, default=0.05, help="target error rate among accepted predictions")
    parser.add_argument("--delta", type=float, default=0.1,
                        help="allowed probability that the true risk among accepted exceeds alpha")
    parser.add_argument("--templates", default="paper", choices=["paper", "ensemble"], help="prompt template set")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="which exported encoders to run (int8: the quantized image encoder of a "
                             "--precision int8 export, for the CPU provider; its text encoder is fp32)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: its own choice)")
    parser.add_argument("--threshold-method", default="ltt", choices=["ltt", "sgr"],
                        help="how the accept threshold is chosen: 'ltt' (Learn then Test: thresholds tested one by "
                             "one from the strictest down by exact binomial tests, stopping at the first that fails; "
                             "the risk guarantee holds for the procedure as a whole) or 'sgr' (the older binary "
                             "search with delta split over its steps)")
    parser.add_argument("--prototype-recipe", default=None, choices=["unit-mean", "raw-mean"],
                        help="how shot embeddings are averaged into a class prototype: 'unit-mean' normalizes each "
                             "shot first, 'raw-mean' averages the raw embeddings and normalizes once (the official "
                             "code's); default: raw-mean for an auxiliary --prototype-encoder, unit-mean for the VLM's")
    parser.add_argument("--allow-unknown-words", action="store_true",
                        help="go on when class names are outside the model's vocabulary (their prompts encode to "
                             "unknown tokens; without this flag that is refused)")


def add_calibrate_parser(subparsers) -> None:
    """Add `calibrate`: build artifacts/<model>/bundle (prototypes, trust head, threshold)."""
    parser = subparsers.add_parser(
        "calibrate", formatter_class=help_formatter,
        help="learn when to trust the model on your images: prototypes and an accept threshold with a risk "
             "guarantee (the bundle `serve` loads)",
        description="Encode k labelled shots per class with the exported image encoder (image prototypes) and "
                    "the class prompts with the text encoder (text prototypes); choose the trust score, lambda and an "
                    "accept threshold with a risk guarantee on the held-out rest of the data; write "
                    "prototypes.npz, trust_head.onnx and bundle.json. Fashion-MNIST uses its 5,000-image "
                    "calibration split, never the test split.")
    _add_common(parser)
    parser.add_argument("--data", default="fashion-mnist",
                        help="'fashion-mnist', an image folder with one sub-folder per class, a CoOp split .json "
                             "(shots from its 'train' rows, lambda and threshold on 'val'; needs --image-root), or a "
                             "path,label .csv (header names path/image/file and label/class/choice columns)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder the relative image paths of a --data split .json (or .csv: default its own "
                             "folder) start from")
    parser.add_argument("--prototype-encoder", default="vlm",
                        help="where the image prototypes come from: 'vlm' (the model's own image encoder) or the "
                             "artifacts folder of an auxiliary image encoder, e.g. artifacts/dinov2_vitb14 "
                             "(TrustVLM's DINOv2 option; export it with `trustvlm export --model dinov2_vitb14`)")
    parser.add_argument("--out", type=Path, default=None,
                        help="bundle folder (default: <artifacts>/bundle; with --per-camera: <artifacts>/cameras, "
                             "one bundle folder per camera and cameras.toml)")
    parser.add_argument("--per-camera", action="store_true",
                        help="--data holds one folder per camera (DIR/<camera>/<class>/*): calibrate each camera on "
                             "its own images, write one bundle per camera and the camera map for `serve --bundles`")
    parser.add_argument("--lam", type=_lambda_arg, default="auto",
                        help="weight of the image-prototype term: 'auto' (chosen by calibration AURC) or a number "
                             "(1 is the paper's)")
    parser.add_argument("--score", default=AUTO_SCORE, choices=[AUTO_SCORE, *SCORES],
                        help="score the accept threshold applies to: 'auto' picks, on half of the held-out images, "
                             "the one whose threshold can guarantee the most coverage at --alpha/--delta (MSP, "
                             "trustvlm, trustvlm_star over their lambda/T grids, or a fused score: a logistic "
                             "model of the trust signals fitted there); the fused scores need --lam auto")
    parser.add_argument("--ood-gate", default="auto", choices=["auto", "on", "off"],
                        help="out-of-distribution gate: defer frames unlike every calibration image (reason "
                             "out_of_distribution) before the trust threshold. auto: on when the held-out images "
                             "can set --ood-false-reject-rate; on: refuse otherwise; off: no gate")
    parser.add_argument("--ood-false-reject-rate", type=float, default=0.01,
                        help="share of in-distribution frames the gate may defer (set on held-out calibration images)")
    parser.set_defaults(handler=run_calibrate)


def run_calibrate(args) -> int:
    """Handler of `trustvlm calibrate`."""
    from trustvlm.contract.bundle import describe_bundle  # noqa: PLC0415 - heavy imports per command

    if args.per_camera:
        return _calibrate_cameras(args)
    out = args.out or args.artifacts / "bundle"
    try:
        bundle = _calibrate_one(args, args.data, out)
    except _expected_errors() as error:
        raise CliError(str(error)) from error
    print(f"wrote {bundle.path}: {describe_bundle(bundle)}")
    for line in _guarantee_lines(bundle.info):
        print(line)
    if bundle.info.selection.get("ood_gate"):
        print(bundle.info.selection["ood_gate"])
    return 0


def _guarantee_lines(info) -> list[str]:
    """What the bundle's threshold images certify at other alphas, and the sample-size estimate when it has one."""
    from trustvlm.calibration.guarantee_frontier import guarantee_lines  # noqa: PLC0415

    return guarantee_lines(info.guarantee_frontier, info.threshold.delta, info.threshold.n_calibration,
                           info.selection.get("sample_size_estimate"))


def _calibrate_one(args, data, out: Path):
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415

    return calibrate(args.artifacts, data, out, k=args.k, seed=args.seed, lam=args.lam, alpha=args.alpha,
                     delta=args.delta, templates=args.templates, score=args.score, precision=args.precision,
                     threads=args.threads, prototype_encoder=args.prototype_encoder, image_root=args.image_root,
                     threshold_method=args.threshold_method, prototype_recipe=args.prototype_recipe,
                     allow_unknown_words=args.allow_unknown_words, ood_gate=args.ood_gate,
                     ood_false_reject_rate=args.ood_false_reject_rate)


def _calibrate_cameras(args) -> int:
    """`calibrate --per-camera`: one bundle per camera folder of --data, and the camera map; a line per camera."""
    from trustvlm.contract.camera_map import CameraMap, write_camera_map  # noqa: PLC0415

    data = Path(args.data)
    cameras = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    if not cameras:
        raise CliError(f"--per-camera needs --data to be a folder of camera folders (DIR/<camera>/<class>/*), but "
                       f"{data} has none")
    out = args.out or args.artifacts / "cameras"
    written, failed = {}, []
    for camera in cameras:
        try:
            bundle = _calibrate_one(args, camera, out / camera.name)
        except _expected_errors() as error:
            failed.append(camera.name)
            print(f"camera {camera.name}: refused: {error}")
            continue
        written[camera.name] = bundle.path
        choice, selection = bundle.info.threshold, bundle.info.selection
        limit = selection.get("certifiable_limit")
        print(f"camera {camera.name}: {bundle.info.score} >= {choice.threshold:.4g}"
              + (f", guaranteed coverage {100 * choice.coverage:.1f}%" if choice.feasible else ", no feasible threshold")
              + (f", certifiable limit {100 * limit:.1f}%" if limit is not None else "")
              + f", gate {'on' if bundle.info.ood_gate is not None else 'off'} ({bundle.path})")
        for line in _guarantee_lines(bundle.info):
            print(f"  {line}")
    if written:
        path = write_camera_map(out / "cameras.toml", CameraMap(written))
        print(f"wrote {path}: {len(written)} camera(s); serve them with `trustvlm serve --artifacts {args.artifacts} "
              f"--bundles {path}`")
    if failed:
        raise CliError(f"{len(failed)} of {len(cameras)} cameras could not be calibrated ({', '.join(failed)}): "
                       "see their lines above; the camera map leaves them out")
    return 0


def add_eval_parser(subparsers) -> None:
    """Add `eval`: the misclassification-detection report, clean and under camera shifts."""
    from trustvlm.calibration.shifts import SHIFTS  # noqa: PLC0415 - cheap (numpy + cv2)

    parser = subparsers.add_parser(
        "eval", formatter_class=help_formatter,
        help="measure how well each trust score (MSP, baselines, TrustVLM) tells right from wrong predictions, "
             "on clean and degraded-camera test images",
        description="For the clean test images and each camera shift: prototypes from k shots of the equally "
                    "shifted calibration images, lambda and a threshold from the rest of them, then ACC, AURC, "
                    "E-AURC, AUROC and FPR95 of every score on the test images; writes results.md, results.json, "
                    "per-sample npz files and risk-coverage plots. Data: Fashion-MNIST (calibration split / test "
                    "split), an image folder with a held-out --test-data folder of the same classes, or a CoOp "
                    "split .json ('train' shots, 'val' lambda and threshold, 'test' report). Without a separate "
                    "test set there is no report.")
    _add_common(parser)
    parser.add_argument("--data", default="fashion-mnist",
                        help="'fashion-mnist', an image folder with one sub-folder per class (shots, lambda and "
                             "threshold; needs --test-data), a CoOp split .json (needs --image-root), or a "
                             "path,label .csv (as a folder)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder the relative image paths of a --data split .json (or of a .csv, default its "
                             "own folder) start from")
    parser.add_argument("--test-data", type=Path, default=None,
                        help="image folder with the same class sub-folders, or a path,label .csv of the same "
                             "classes, to report on (held out: never used for shots, lambda or threshold); replaces "
                             "a split file's 'test' rows")
    parser.add_argument("--lam", type=_fixed_lambda_arg, default=1.0,
                        help="lambda of the paper rows (TrustVLM, TrustVLM*); the official scripts use 1, and 0.1 "
                             "on Oxford Pets")
    parser.add_argument("--temperature", type=_positive_float, default=0.01,
                        help="T of TrustVLM*'s prototype softmax in the paper rows; the official scripts use 0.01, "
                             "and 0.1 on Oxford Pets, Stanford Cars and Food-101")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <artifacts>/eval)")
    parser.add_argument("--shifts", nargs="*", default=list(SHIFTS), choices=list(SHIFTS),
                        help="synthetic camera shifts applied to both calibration and test images, evaluated besides "
                             "the clean data (none: clean only)")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false",
                        help="skip the k / lambda / shot-seed ablations")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="use only N test images (Fashion-MNIST: the first N; other data: a seeded sample)")
    parser.add_argument("--prototype-encoder", default="vlm",
                        help="'vlm': image prototypes from the model's own image encoder only; or the artifacts "
                             "folder of an auxiliary image encoder (e.g. artifacts/dinov2_vitb14): the report then "
                             "compares both prototype sources side by side (extra rows marked 'aux')")
    parser.set_defaults(handler=run_eval)


def run_eval(args) -> int:
    """Handler of `trustvlm eval`."""
    from trustvlm.calibration.eval_report import RESULTS_MD, main_table, write_report  # noqa: PLC0415
    from trustvlm.calibration.evaluate import EvalConfig, run_evaluation  # noqa: PLC0415
    from trustvlm.calibration.guarantee_frontier import guarantee_lines  # noqa: PLC0415

    out = args.out or args.artifacts / "eval"
    try:
        config = EvalConfig(k=args.k, seed=args.seed, templates=args.templates, shifts=tuple(args.shifts),
                            alpha=args.alpha, delta=args.delta, ablations=args.ablations,
                            test_limit=args.test_limit, precision=args.precision, threads=args.threads,
                            prototype_encoder=str(args.prototype_encoder), data=str(args.data),
                            image_root=None if args.image_root is None else str(args.image_root),
                            test_data=None if args.test_data is None else str(args.test_data),
                            lam=args.lam, temperature=args.temperature, prototype_recipe=args.prototype_recipe,
                            allow_unknown_words=args.allow_unknown_words, threshold_method=args.threshold_method)
        report = run_evaluation(args.artifacts, config)
        write_report(report, out)
    except _expected_errors() as error:
        raise CliError(str(error)) from error
    print("\n".join(main_table(report.datasets)))
    first = report.datasets[0]
    for line in guarantee_lines(first.info.get("guarantee_frontier", []), args.delta, first.info["n_calib_threshold"],
                                first.info.get("sample_size_estimate"),
                                f"{first.name}, 'auto' score: what the threshold images can certify"):
        print(line)
    print(f"wrote {out / RESULTS_MD} ({report.seconds['total']:.1f} s)")
    return 0
