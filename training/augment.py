"""Training augmentation policies, chosen for the data.

- ``shift`` (default): a random shift of up to 3 pixels per batch. Safe for any image.
- ``flip``: a random horizontal flip per image, then the shift. For mirror-symmetric classes only
  (clothes, most objects seen from the side): a flip turns a 2 into a backwards 2, reverses text and
  swaps left- and right-turn signs. The shipped demo model was trained with it (Fashion-MNIST).
- ``none``: the images as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when augmenting, so `trustvlm --help` and `serve` never load it
    import torch

AUGMENT_POLICIES = ("shift", "flip", "none")
DEFAULT_AUGMENT = "shift"
MAX_SHIFT = 3


def augment(pixels: torch.Tensor, generator: torch.Generator, policy: str = DEFAULT_AUGMENT) -> torch.Tensor:
    """Augment a uint8 N x H x W x 3 batch by `policy` (see the module docstring).

    Raises:
        ValueError: An unknown policy.
    """
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"augmentation policy should be one of {AUGMENT_POLICIES}, but got {policy!r}")
    if policy == "none":
        return pixels
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    if policy == "flip":
        flip = torch.rand(len(pixels), generator=generator) < 0.5
        pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(2), pixels)
    padded = F.pad(pixels.permute(0, 3, 1, 2).float(), (MAX_SHIFT,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * MAX_SHIFT + 1, (2,), generator=generator).tolist()
    size = pixels.shape[1]
    return padded[:, :, dy:dy + size, dx:dx + size].permute(0, 2, 3, 1).to(torch.uint8)
