"""Calibrate AIBN on a few batches of the user's images: running statistics, optionally the affine.

A patched backbone's AIBN layers start with the running statistics of the norm they replaced
(BatchNorm) or with 0 / 1 (LayerNorm has none); the batch side of their mix in eval reads them.
``calibrate_aibn`` replaces them by the average batch statistics of the given images (as
``torch.optim.swa_utils.update_bn`` does for BatchNorm), touching nothing else: every other module
stays in eval mode, so unpatched BatchNorms and TNorm statistics do not change.

With ``reference=`` (the unpatched model) it also refits each AIBN's affine, layer by layer in
forward order, so that its output matches what the replaced norm computes on the same input in
the least-squares sense per channel: the closest a per-channel affine can bring AIBN to the
original function (approximate: the normalisation itself differs from a LayerNorm's).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .aibn import AIBN

__all__ = ["calibrate_aibn"]


@torch.no_grad()
def calibrate_aibn(model: nn.Module, batches: Iterable, *, reference: nn.Module | None = None) -> int:
    """Set every AIBN's running mean/variance to the mean batch statistics over ``batches``.

    Args:
        model: a patched model (or any module holding AIBN layers).
        batches: an iterable of image tensors, or of ``(images, camids)`` pairs (camera ids are
            passed as ``model(images, camids=camids)``, which a TNorm-patched model needs).
        reference: the model before patching; its norms at the AIBN paths are the fitting targets.

    Returns the number of images seen. The model's train/eval mode is restored afterwards.
    """
    batches = list(batches)
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
            _forward(model, images, camids)
            seen += images.shape[0]
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    if seen == 0:
        raise ValueError("calibrate_aibn: no batches given")
    if reference is not None:
        _fit_affine(model, reference.eval(), batches)
    return seen


def _forward(model, images, camids):
    return model(images) if camids is None else model(images, camids=camids)


def _fit_affine(model: nn.Module, reference: nn.Module, batches) -> None:
    """Per AIBN (forward order), least-squares ``weight``/``bias`` mapping its normalised output to
    the reference norm's output on the patched model's own input at that layer."""
    targets = dict(reference.named_modules())
    was_training = model.training
    model.eval()
    try:
        for path, layer in [(p, m) for p, m in model.named_modules() if isinstance(m, AIBN)]:
            if path not in targets:
                raise ValueError(f"calibrate_aibn: reference has no module {path!r}; pass the unpatched model")
            sums = _Moments()
            hook = layer.register_forward_hook(lambda m, a, out: sums.add(m, a[0], targets[path]))
            try:
                for batch in batches:
                    images, camids = batch if isinstance(batch, (tuple, list)) else (batch, None)
                    _forward(model, images, camids)
            finally:
                hook.remove()
            sums.solve(layer)
    finally:
        model.train(was_training)


class _Moments:
    """Running sums for one least-squares line per channel: target ~ g * z + b."""

    def __init__(self):
        self.n = self.z = self.t = self.zz = self.zt = 0.0

    def add(self, layer: AIBN, x, target_norm):
        weight, bias = layer.weight.clone(), layer.bias.clone()
        layer.weight.fill_(1.0), layer.bias.zero_()
        z = layer.__class__.forward(layer, x)  # the normalised input, without this hook recursing
        layer.weight.copy_(weight), layer.bias.copy_(bias)
        t = target_norm(x)
        dims = [d for d in range(x.dim()) if d != (x.dim() - 1 if layer.channels_last else 1)]
        z, t = z.double(), t.double()
        self.n += z.numel() / z.shape[-1 if layer.channels_last else 1]
        self.z, self.t = self.z + z.sum(dims), self.t + t.sum(dims)
        self.zz, self.zt = self.zz + (z * z).sum(dims), self.zt + (z * t).sum(dims)

    def solve(self, layer: AIBN):
        mz, mt = self.z / self.n, self.t / self.n
        var = (self.zz / self.n - mz * mz).clamp_min(1e-12)
        g = (self.zt / self.n - mz * mt) / var
        layer.weight.copy_(g.to(layer.weight.dtype)), layer.bias.copy_((mt - g * mz).to(layer.bias.dtype))
