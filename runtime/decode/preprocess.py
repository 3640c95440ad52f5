"""Image preprocessing as the export manifest describes it: resize, crop, to uint8 RGB.

The exported image encoders take uint8 RGB pixels (batch x size x size x 3) and normalize
inside the graph, so this module only resizes and crops. Four times fewer bytes cross to the
accelerator than with float input, and the normalization constants live with the model.

Resizing uses Pillow, as open_clip's own transforms do (torchvision on PIL images): its
antialiased bicubic/bilinear filters are what CLIP models were trained with. OpenCV's filters
differ enough on large downscales (a 768x576 camera frame to 224 px) to move embeddings by
more than 0.001 in cosine; sizes and crop offsets follow torchvision's rounding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
from PIL import Image

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}
RESIZE_MODES = ("shortest", "squash")
CROPS = ("center", "none")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the encoder's input (open_clip's `PreprocessCfg`, as data)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation should be one of {sorted(INTERPOLATIONS)}, but got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode should be one of {RESIZE_MODES}, but got {self.resize_mode!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop should be one of {CROPS}, but got {self.crop!r}")
        if self.size < 1:
            raise ValueError(f"size should be positive, but got {self.size}")

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocess keys {sorted(unknown)}; expected {sorted(known)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data


def resized_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    """(width, height) after the resize step, with torchvision's rounding (long side truncated)."""
    size = config.size
    if config.resize_mode == "squash":
        return size, size
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_and_crop(rgb: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Resize (shortest side to `size`, or squash) and center-crop one uint8 H x W x 3 image."""
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 3 image, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    target = resized_size(height, width, config)
    if (width, height) != target:
        image = Image.fromarray(np.ascontiguousarray(rgb)).resize(target, INTERPOLATIONS[config.interpolation])
        rgb = np.asarray(image)
    return center_crop(rgb, config.size) if config.crop == "center" else np.ascontiguousarray(rgb)


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Center crop to size x size, offsets rounded as torchvision's CenterCrop does."""
    height, width = rgb.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def preprocess_batch(images: list[np.ndarray] | np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Many RGB images -> one uint8 batch (N x size x size x 3) for the image encoder."""
    return np.stack([resize_and_crop(np.asarray(image), config) for image in images])
