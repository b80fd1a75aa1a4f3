"""Image transforms for ReID training and evaluation (torchvision)."""
from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_transforms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(height: int, width: int, *, train: bool, flip_p: float = 0.5,
                     pad: int = 10, random_erasing_p: float = 0.5,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """PIL image -> normalised ``(3, height, width)`` float tensor.

    Training: resize, horizontal flip (``flip_p``), zero-pad by ``pad`` and random-crop back,
    to tensor, normalise, random erasing (``random_erasing_p``; erased pixels become 0, the
    dataset mean after normalisation). Evaluation (``train=False``): resize, to tensor,
    normalise. Randomness comes from torch's global generator (seed the DataLoader).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    for name, p in (("flip_p", flip_p), ("random_erasing_p", random_erasing_p)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name}={p} must be a probability in [0, 1]")
    if pad < 0:
        raise ValueError(f"pad={pad} must be >= 0")
    steps = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if train:
        steps += [T.RandomHorizontalFlip(flip_p)]
        if pad:
            steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if train and random_erasing_p > 0:
        steps += [T.RandomErasing(p=random_erasing_p, value=0)]
    return T.Compose(steps)
