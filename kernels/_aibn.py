"""AIBN with the Triton kernels: the public entry :func:`aibn` (validation and dispatch).

The kernels, launchers and the op with its autograd are the segmented normalization core in
:mod:`._segment_norm` (one segment, the whole batch, with a gate); with ``process_group`` in
training the eager synchronized path of :mod:`._distributed` runs instead.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _utils
from ._contract import check_mix
from ._distributed import distributed_segment_norm
from ._segment_norm import segment_norm_forward

__all__ = ["aibn"]


def aibn(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    mix: str = "var",
    channels_last: bool = False,
    process_group=None,
) -> Tensor:
    """Adaptive instance-batch normalization with the Triton kernels (same contract as
    ``timm_reid.layers.functional.aibn``, docs/DESIGN.md 3.1).

    * ``x``: ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``channels_last=True``; any strides (NCHW and
      channels-last memory are read in place); fp32 / fp16 / bf16; statistics in fp32; ``y`` has
      ``x``'s dtype and layout.
    * ``weight``, ``bias``: ``(C,)`` or None. ``gate``: raw ``(1,)`` tensor, ``w = clamp(gate, 0, 1)``
      weights the batch side; its gradient is zero outside ``[0, 1]``.
    * ``running_mean``, ``running_var``: ``(C,)`` or None. Training: batch statistics from the
      batch, gradients through every statistic, buffers updated in place after the launches
      (``r <- (1 - momentum) r + momentum * stat``; in-place hazard: do not pass buffers that
      autograd saved elsewhere). Eval: the buffers are the batch statistics (required).
    * ``mix``: ``"var"`` (mix variances) or ``"std"`` (mix standard deviations).
    * Differentiable w.r.t. ``x``, ``weight``, ``bias``, ``gate`` (op ``timm_reid::segment_norm_*``).
    * ``process_group``: in training, batch statistics (and their gradients) are synchronized over
      the group so every process gets what one process gets on the concatenated batch (eager
      ``autograd.Function``, see :mod:`._distributed`); ignored in eval.
    """
    _utils.check_activation(x, channels_last, "aibn")
    check_mix(mix, "aibn")
    c = x.shape[3] if channels_last else x.shape[1]
    l = x.shape[1] * x.shape[2] if channels_last else x.shape[2] * x.shape[3]
    if l < 2:
        raise ValueError(f"aibn: instance statistics need H*W >= 2, got shape {tuple(x.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("aibn: eval mode needs running_mean and running_var")
    _utils.check_running(running_mean, 1, c, "running_mean", "aibn")
    _utils.check_running(running_var, 1, c, "running_var", "aibn")
    update = training and running_mean is not None and running_var is not None
    segments = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    if training and process_group is not None:
        return distributed_segment_norm(
            x, weight, bias, gate, running_mean, running_var, segments, 1,
            momentum=float(momentum), eps=float(eps), mix_std=mix == "std", channels_last=channels_last,
            group=process_group,
        )
    outs = segment_norm_forward(
        x, weight, bias, gate, running_mean, running_var, segments, 1,
        training, update, float(momentum), float(eps), mix == "std", channels_last,
    )
    if update:
        with torch.no_grad():
            running_mean.copy_(outs[7].view_as(running_mean))
            running_var.copy_(outs[8].view_as(running_var))
    return outs[0]
