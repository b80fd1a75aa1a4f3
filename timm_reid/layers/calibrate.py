"""Re-estimate AIBN running statistics on a few batches of the user's images.

A patched backbone's AIBN layers start with the running statistics of the norm they replaced
(BatchNorm) or with 0 / 1 (LayerNorm has none); the batch side of their mix in eval reads them.
``calibrate_aibn`` replaces them by the average batch statistics of the given images (as
``torch.optim.swa_utils.update_bn`` does for BatchNorm), touching nothing else: every other module
stays in eval mode, so unpatched BatchNorms and TNorm statistics do not change.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .aibn import AIBN

__all__ = ["calibrate_aibn"]


@torch.no_grad()
def calibrate_aibn(model: nn.Module, batches: Iterable, *, camids_key: str = "camids") -> int:
    """Set every AIBN's running mean/variance to the mean batch statistics over ``batches``.

    Args:
        model: a patched model (or any module holding AIBN layers).
        batches: an iterable of image tensors, or of ``(images, camids)`` pairs (camera ids are
            passed as ``model(images, camids=camids)``, which a TNorm-patched model needs).

    Returns the number of images seen. The model's train/eval mode is restored afterwards.
    """
    layers = [m for m in model.modules() if isinstance(m, AIBN)]
    if not layers:
        raise ValueError("calibrate_aibn: the model has no AIBN layer (patch it with aibn=[...] first)")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    seen = 0
    try:
        model.eval()
        for m in layers:
            m.train()
            m.reset_running_stats()
        for step, batch in enumerate(batches):
            images, camids = batch if isinstance(batch, (tuple, list)) else (batch, None)
            for m in layers:
                m.momentum = 1.0 / (step + 1)  # running average of the per-batch statistics
            model(images, **({camids_key: camids} if camids is not None else {}))
            seen += images.shape[0]
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    if seen == 0:
        raise ValueError("calibrate_aibn: no batches given")
    return seen
