"""Degraded-camera variants of real images, for evaluating trust under distribution shift.

Each shift maps a uint8 batch (``N x H x W`` grey or ``N x H x W x 3`` RGB) to a uint8 batch of
the same shape, deterministically for a given seed. Shifts are applied at the images' native
resolution (28 x 28 for Fashion-MNIST), *before* the model's preprocessing: a camera degrades
the image it captures, and the resize to the encoder's input then acts on the degraded image,
as it would on the device.

==========  =================================================================================
name        what it does (defaults)
==========  =================================================================================
blur        Gaussian blur, sigma 1.0 px (defocus / motion-free camera shake); no randomness
noise       additive Gaussian noise, std 0.12 of the 0-255 range (sensor noise)
low_light   dim (gain 0.5) and darken the mid-tones (gamma 2.0), then read-out noise std 0.03
jpeg        JPEG round trip at quality 12 (cv2.imencode): blocking and ringing artefacts
==========  =================================================================================

Use :data:`SHIFTS` or :func:`apply_shift` to run them by name. :func:`parse_shift` reads a shift with changed
parameters, ``name:key=value,...`` (the keywords of the shift's function, e.g. ``low_light:gain=0.25``: a
darker low-light camera), into a :class:`ShiftSpec`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

#: A shift: (uint8 batch, seed) -> uint8 batch of the same shape.
Shift = Callable[[np.ndarray, int], np.ndarray]


def _check_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"expected a uint8 batch N x H x W or N x H x W x 3, got {images.dtype} {images.shape}")
    return images


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gaussian_blur(images: np.ndarray, seed: int = 0, sigma: float = 1.0) -> np.ndarray:
    """Blur every image with a Gaussian kernel of `sigma` pixels (seed unused: no randomness)."""
    images = _check_batch(images)
    if sigma <= 0:
        raise ValueError(f"sigma should be > 0, but got {sigma}")
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
                     for image in images])


def gaussian_noise(images: np.ndarray, seed: int = 0, std: float = 0.12) -> np.ndarray:
    """Add Gaussian noise of `std` (a fraction of the 0-255 range), clipped and rounded."""
    images = _check_batch(images)
    rng = np.random.default_rng(seed)
    return _to_uint8(images + rng.normal(0.0, 255.0 * std, images.shape))


def low_light(images: np.ndarray, seed: int = 0, gain: float = 0.5, gamma: float = 2.0,
              read_noise: float = 0.03) -> np.ndarray:
    """Dim by `gain`, darken mid-tones by `gamma`, add read-out noise of `read_noise` (fraction of range)."""
    images = _check_batch(images)
    rng = np.random.default_rng(seed)
    dim = gain * (images / 255.0) ** gamma
    return _to_uint8(255.0 * (dim + rng.normal(0.0, read_noise, images.shape)))


def jpeg_artifacts(images: np.ndarray, seed: int = 0, quality: int = 12) -> np.ndarray:
    """Encode each image as JPEG at `quality` (1-100) and decode it (seed unused)."""
    images = _check_batch(images)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality should be in [1, 100], but got {quality}")
    out = np.empty_like(images)
    flag = cv2.IMREAD_GRAYSCALE if images.ndim == 3 else cv2.IMREAD_COLOR
    for i, image in enumerate(images):
        bgr = image if images.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode image {i} of shape {image.shape}")
        decoded = cv2.imdecode(encoded, flag)
        out[i] = decoded if images.ndim == 3 else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return out


#: The shifts by name, in report order.
SHIFTS: dict[str, Shift] = {
    "blur": gaussian_blur,
    "noise": gaussian_noise,
    "low_light": low_light,
    "jpeg": jpeg_artifacts,
}


def apply_shift(name: str, images: np.ndarray, seed: int = 0, **params: float) -> np.ndarray:
    """Run the shift called `name`, with its default severity or the keyword `params` of its function.

    Raises:
        ValueError: For an unknown name (listing the known ones), a bad batch or a parameter out of range.
        TypeError: A keyword the shift's function does not have (:func:`parse_shift` checks them first).
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {list(SHIFTS)}")
    return SHIFTS[name](images, seed, **params)


def shift_parameters(name: str) -> dict[str, float]:
    """The keyword parameters of the shift called `name` and their defaults, e.g. ``{"sigma": 1.0}``.

    Raises:
        ValueError: An unknown name.
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {list(SHIFTS)}")
    return {key: p.default for key, p in inspect.signature(SHIFTS[name]).parameters.items()
            if key not in ("images", "seed") and p.default is not inspect.Parameter.empty}


@dataclass(frozen=True)
class ShiftSpec:
    """A shift by name with the parameters it changes (none: its defaults).

    Attributes:
        name: A name of :data:`SHIFTS`.
        params: ``((keyword, value), ...)`` in the order given.
    """

    name: str
    params: tuple[tuple[str, float], ...] = ()

    @property
    def kwargs(self) -> dict[str, float]:
        """The changed parameters as keyword arguments of the shift's function."""
        return dict(self.params)

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{key}={value:g}" for key, value in self.params) if self.params else "")


@functools.lru_cache(maxsize=64)
def parse_shift(text: str) -> ShiftSpec:
    """``"low_light"`` or ``"low_light:gain=0.25,gamma=2.2"`` -> :class:`ShiftSpec`.

    Values are numbers; a parameter whose default is an integer takes an integer. The shift is tried once on a
    small blank batch, so a value out of its range is refused here rather than on the first frame.

    Raises:
        ValueError: One line naming what is wrong: an unknown shift (listing the known ones), an unknown
            parameter (listing the shift's own), a value that is not a number or is out of range.
    """
    name, _, rest = str(text).strip().partition(":")
    name = name.strip()
    known = shift_parameters(name)  # unknown name: ValueError listing the known ones
    params = []
    for part in (p.strip() for p in rest.split(",")) if rest.strip() else ():
        key, equals, value = (s.strip() for s in part.partition("="))
        if key not in known:
            raise ValueError(f"shift {name!r} has no parameter {key!r}; its parameters: "
                             f"{', '.join(f'{k}={v:g}' for k, v in known.items()) or 'none'} (in {text!r})")
        try:
            number = int(value) if isinstance(known[key], int) else float(value)
        except ValueError:
            number = None
        if not equals or number is None or not np.isfinite(number):
            kind = "an integer" if isinstance(known[key], int) else "a number"
            raise ValueError(f"shift parameter {name}:{key} should be {kind} (key=value), but got {part!r} "
                             f"(in {text!r})")
        params.append((key, number))
    if len({key for key, _ in params}) != len(params):
        raise ValueError(f"shift {text!r} gives a parameter twice")
    spec = ShiftSpec(name, tuple(params))
    try:
        apply_shift(name, np.zeros((1, 4, 4), np.uint8), 0, **spec.kwargs)
    except ValueError as error:
        raise ValueError(f"shift {text!r}: {error}") from None
    return spec
