"""Intermediate layers of the image encoder as typicality features (multi-layer Mahalanobis), measured in torch.

    python -m trustvlm.benchmarks.ood_layers [--model demo_fmnist] [--rate 0.01]

Same data, halves and threshold rule as :mod:`trustvlm.benchmarks.ood_gate`; the features are the
mean token of each transformer block's output of the demo model's image encoder (open_clip ViT,
4 blocks of width 128), read with forward hooks on the torch model (needs the ``[export]`` extra).
Each block gets a class-conditional Mahalanobis distance with a shared covariance; they are
combined, as the gate combines its components, by the max of the distances normalized by their
median on the fit images. Printed: the share of each source passing at the false-reject rate, and
the in-domain false rejects on the 10,000 test frames. Nothing here is exported: this measures
whether extra encoder outputs would be worth their cost in the graphs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from trustvlm.benchmarks.ood_gate import SOURCES, camera_images, demo_shots, out_of_domain_frames
from trustvlm.calibration.ood_gate import conformal_threshold, fit_component, frame_features, GREY_LEVEL
from trustvlm.export.model_loading import load_model
from trustvlm.models.registry import get_model_spec
from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch


def block_features(model, pixels: np.ndarray, batch_size: int = 512) -> list[np.ndarray]:
    """Per transformer block, the ``N x width`` mean token of its output, for uint8 ``N x S x S x 3`` pixels."""
    visual = model.clip.visual
    captured: list[list[torch.Tensor]] = [[] for _ in visual.transformer.resblocks]
    hooks = [block.register_forward_hook(lambda _m, _i, out, i=i: captured[i].append(out.mean(dim=1).detach()))
             for i, block in enumerate(visual.transformer.resblocks)]
    try:
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                x = torch.from_numpy(pixels[start:start + batch_size]).float().permute(0, 3, 1, 2) / 255.0
                model.encode_image((x - 0.5) / 0.5)
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(chunks).double().numpy() for chunks in captured]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.ood_layers",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="demo_fmnist", help="registry model (its embedded or pretrained weights)")
    parser.add_argument("--rate", type=float, default=0.01, help="false-reject rate on held-out calibration images")
    args = parser.parse_args(argv)
    spec = get_model_spec(args.model)
    model = load_model(spec).model.eval()
    config = PreprocessConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
    calib, labels, names = camera_images("low_light", "calib")
    test, _, _ = camera_images("low_light", "test")
    shots = demo_shots(labels, len(names), 16, 0)
    rest = np.setdiff1d(np.arange(len(labels)), shots.reshape(-1))
    order = np.random.default_rng([0, 2]).permutation(rest)
    fit_rows = np.sort(np.concatenate([shots.reshape(-1), order[:len(order) // 2]]))
    threshold_rows = np.sort(order[len(order) // 2:])
    sets = {"in-domain test": preprocess_batch(test, config), "calib": preprocess_batch(calib, config)}
    sets.update({name: preprocess_batch(frames, config) for name, frames in out_of_domain_frames(0).items()})
    feats = {name: block_features(model, pixels) for name, pixels in sets.items()}
    frames = {name: frame_features(pixels) for name, pixels in sets.items()}
    blocks = len(feats["calib"])
    components = [fit_component(f"block{i}", feats["calib"][i][fit_rows], labels[fit_rows]) for i in range(blocks)]
    frame_component = fit_component("frame", frames["calib"][fit_rows], labels[fit_rows], ridge=GREY_LEVEL ** 2)

    def distances(name: str, which: list[int], with_frame: bool) -> np.ndarray:
        columns = [components[i].distance(feats[name][i]) for i in which]
        columns += [frame_component.distance(frames[name])] if with_frame else []
        return np.stack(columns, axis=1).max(axis=1)

    candidates = {f"block {i + 1} only": ([i], False) for i in range(blocks)}
    candidates["all blocks"] = (list(range(blocks)), False)
    candidates["all blocks + frame statistics"] = (list(range(blocks)), True)
    print(f"| features (max of normalized Mahalanobis) | {' | '.join(SOURCES)} | in-domain false rejects |")
    print("|---|" + "---:|" * (len(SOURCES) + 1))
    for title, (which, with_frame) in candidates.items():
        threshold, _ = conformal_threshold(-distances("calib", which, with_frame)[threshold_rows], args.rate)
        passing = {name: float(np.mean(-distances(name, which, with_frame) >= threshold)) for name in sets}
        print(f"| {title} | " + " | ".join(f"{100 * passing[s]:.1f}%" for s in SOURCES)
              + f" | {100 * (1 - passing['in-domain test']):.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
