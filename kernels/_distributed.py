"""Synchronized statistics over a process group: the kernels' ``process_group=`` path.

Each process reduces its own samples with the kernels; only the small per-segment statistics
(``(S, C)``: one row per camera, or one row for AIBN) cross the process boundary, so the result
equals one process seeing the concatenated batch:

* forward: local segment statistics -> all-reduce of ``(count, count * mean)`` -> global means ->
  all-reduce of ``count * (var + (mean - global_mean)^2)`` (exact Chan shift of each local
  second moment to the global centre) -> normalization with the global statistics.
* backward: the per-segment gradient sums reaching the batch statistics are all-reduced and divided
  by the global segment sizes between the two stages of the backward finalize kernel.

Collectives cannot be arguments of ``torch.library`` ops, so this path is a plain
``torch.autograd.Function`` (eager; torch.compile graph-breaks around it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._segment_norm import gate_grad, segmented_backward, segmented_forward
from ._stats import local_segment_stats


def _all_reduce(t: Tensor, group) -> None:
    import torch.distributed as dist

    dist.all_reduce(t, group=group)


def segment_counts(segments: Tensor, num_segments: int) -> Tensor:
    ones = torch.ones(segments.shape[0], dtype=torch.float32, device=segments.device)
    return torch.zeros(num_segments, dtype=torch.float32, device=segments.device).index_add_(0, segments, ones)


def global_segment_stats(
    x: Tensor, segments: Tensor, num_segments: int, channels_last: bool, group
) -> Tuple[Tensor, Tensor, Tensor, tuple]:
    """``(mean, var, count, partials)`` of every segment over all processes of ``group``."""
    seg_mean, seg_var, partials = local_segment_stats(x, segments, num_segments, channels_last)
    count = segment_counts(segments, num_segments)
    first = torch.cat([count[:, None], seg_mean * count[:, None]], dim=1)
    _all_reduce(first, group)
    total = first[:, 0]
    denom = total.clamp(min=1)[:, None]
    mean = first[:, 1:] / denom
    second = count[:, None] * (seg_var + (seg_mean - mean) ** 2)
    _all_reduce(second, group)
    return mean, second / denom, total, partials


def update_rows(running: Tensor, stat: Tensor, total: Tensor, momentum: float) -> None:
    """``running <- (1 - m) running + m stat`` on the rows of segments with samples somewhere."""
    with torch.no_grad():
        view = running.view(stat.shape)
        new = torch.lerp(view.float(), stat, momentum).to(running.dtype)
        view.copy_(torch.where(total[:, None] > 0, new, view))


class DistributedSegmentNorm(torch.autograd.Function):
    """Training-mode AIBN (``gate``) / TNorm ``mode="normalize"`` (``gate=None``) with statistics
    synchronized over ``group``. Returns ``(y, mean, var, count)``: the global segment statistics
    and sizes (non-differentiable) for the running update."""

    @staticmethod
    def forward(ctx, x, weight, bias, gate, segments, num_segments, eps, mix_std, channels_last, group):
        mean_g, var_g, total, partials = global_segment_stats(x, segments, num_segments, channels_last, group)
        y, mu_in, var_in, mu_b, var_b, mean, rstd, _, _ = segmented_forward(
            x, weight, bias, gate, mean_g, var_g, segments, num_segments, False, False, 0.0, eps, mix_std,
            channels_last, need_instance=True, partials=partials,
        )
        ctx.save_for_backward(x, weight, gate, segments, mu_in, var_in, mu_b, var_b, mean, rstd, total)
        ctx.config = (num_segments, mix_std, channels_last, group, bias is not None, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(mean_g, var_g, total)
        return y, mean_g, var_g, total

    @staticmethod
    def backward(ctx, dy, *unused):
        x, weight, gate, segments, mu_in, var_in, mu_b, var_b, mean, rstd, total = ctx.saved_tensors
        num_segments, mix_std, channels_last, group, has_bias, bias_dtype = ctx.config

        def all_reduce_segments(seg_gmu: Tensor, seg_gvar: Tensor) -> None:
            both = torch.stack([seg_gmu, seg_gvar])
            _all_reduce(both, group)
            both /= total.clamp(min=1)[None, :, None]
            seg_gmu.copy_(both[0])
            seg_gvar.copy_(both[1])

        dx, dweight, dbias, dgate = segmented_backward(
            dy, x, weight, gate, segments, num_segments,
            mu_in, var_in, mu_b, var_b, mean, rstd, True, mix_std, channels_last,
            all_reduce_segments=all_reduce_segments,
        )
        d_w = None if weight is None else dweight.to(weight.dtype)
        d_b = dbias.to(bias_dtype) if has_bias else None
        return dx, d_w, d_b, gate_grad(gate, dgate), None, None, None, None, None, None


def distributed_segment_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    segments: Tensor,
    num_segments: int,
    *,
    momentum: float,
    eps: float,
    mix_std: bool,
    channels_last: bool,
    group,
) -> Tensor:
    y, mean_g, var_g, total = DistributedSegmentNorm.apply(
        x, weight, bias, gate, segments, num_segments, eps, mix_std, channels_last, group
    )
    if running_mean is not None and running_var is not None:
        update_rows(running_mean, mean_g, total, momentum)
        update_rows(running_var, var_g, total, momentum)
    return y
