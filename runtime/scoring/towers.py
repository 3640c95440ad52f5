"""The image encoders a bundle's trust head takes its inputs from ("towers"), opened or reused on reload.

The VLM's image encoder feeds the head's ``embedding`` input; an auxiliary encoder (e.g. DINOv2)
feeds ``aux_embedding``. Each has its own preprocessing, checked against what the bundle recorded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping

from trustvlm.contract.bundle import BundleMismatchError, engine_sha256
from trustvlm.contract.manifest import encoder_path, read_manifest
from trustvlm.runtime.scoring.engines import ImageEngine, open_image_engine
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.decode.preprocess import PreprocessConfig
from trustvlm.runtime.scoring.scorer_config import ScorerConfig

__all__ = ["ImageTower", "open_tower", "check_batch_limits"]


@dataclass(frozen=True)
class ImageTower:
    """One image encoder the trust head takes an input from, with its own preprocessing.

    Attributes:
        head_input: The trust head input it feeds (``embedding`` or ``aux_embedding``).
        engine: The encoder (ONNX Runtime session or TensorRT engine).
        preprocess: Resize and crop of that encoder (normalization is inside the graph).
        source: (artifacts folder, precision, backend, ONNX sha256): what a reload may reuse.
    """

    head_input: str
    engine: ImageEngine
    preprocess: PreprocessConfig
    source: tuple


def open_tower(head_input: str, artifacts_dir: str | os.PathLike, precision: str, config: ScorerConfig,
               recorded_preprocess: dict, previous: Mapping[str, ImageTower] | None = None) -> ImageTower:
    """Open (or reuse from `previous`, a scorer's towers, when the same file would be opened) one image encoder.

    Raises:
        BundleMismatchError: The manifest's preprocessing is not the one the bundle recorded.
    """
    manifest = read_manifest(artifacts_dir)
    if dict(manifest["preprocess"]) != dict(recorded_preprocess):
        raise BundleMismatchError(f"{artifacts_dir}: its preprocessing {manifest['preprocess']} is not the one the "
                                  f"bundle was calibrated with ({recorded_preprocess}); recalibrate")
    source = (str(Path(artifacts_dir).resolve()), precision, config.backend,
              engine_sha256(manifest, precision, towers=("image",))["image_encoder"],
              json.dumps(manifest["preprocess"], sort_keys=True))
    reusable = previous.get(head_input) if previous is not None else None
    if reusable is not None and reusable.source == source:
        encoder_path(artifacts_dir, manifest, "image", precision)  # the ONNX file on disk must still match
        return reusable
    engine = open_image_engine(artifacts_dir, manifest, precision, config.backend, config.providers,
                               config.allow_fallback, config.threads, config.max_batch, config.spin)
    return ImageTower(head_input, engine, PreprocessConfig.from_dict(manifest["preprocess"]), source)


def check_batch_limits(towers: list[ImageTower], max_batch: int) -> int | float:
    """The most rows one engine run takes (inf for ONNX Runtime); refuse engines the config cannot feed.

    Raises:
        EngineError: An engine whose batch profile starts above 1 (one camera sends batches of 1),
            or ends below the configured max_batch.
    """
    limit = math.inf
    for tower in towers:
        low, high = getattr(tower.engine, "min_batch", 1), getattr(tower.engine, "max_batch", math.inf)
        if low > 1 or high < max_batch:
            raise EngineError(f"{tower.engine.path.name} takes batches of {low}..{high}, but the service batches "
                              f"1..{max_batch} frames: lower --max-batch, or rebuild the engine with that profile")
        limit = min(limit, high)
    return limit
