"""Fast torch path: one autograd.Function with an analytic backward for AIBN-style normalization.

The autograd graph of the reference formula keeps about ten activation-sized intermediates alive;
this Function saves only the input and per-(n, c) statistics. Each direction allocates one
activation-sized buffer (the centred input, then transformed in place into ``y`` or ``dx``):
on CPU a fresh buffer of that size costs more than a pass over it.

It covers every normalization of the library whose statistics carry gradients:

* AIBN: one segment (the whole batch), gate ``w`` from the module's parameter;
* TNorm ``mode="normalize"`` in training: one segment per camera and ``w = 1``.

The mix of statistics is the reference's own helpers (:mod:`timm_reid.layers.functional`); the
instance statistics are the same two-pass formula computed from the centred buffer (tested
against the reference); the backward is derived in the docstring of :meth:`backward`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .functional import all_reduce, compute_dtype, mix_stats, per_channel, rows, segment_stats, spatial_dims, spatial_sum

__all__ = ["adaptive_norm", "adaptive_forward", "adaptive_backward", "nhwc_memory"]


class AdaptiveNormFunction(torch.autograd.Function):
    """``y = weight * (x - mu) / sqrt(var + eps) + bias`` with gate-mixed instance/batch stats.

    Inputs: ``x`` (N, C, H, W) or (N, H, W, C); ``weight``, ``bias`` (C,) or None; ``gate`` (1,)
    raw (clamped to [0, 1] here; zero gradient outside); ``eval_mean``/``eval_var`` (C,) or (N, C)
    batch-side statistics in eval mode, None in training (then computed from ``segments`` (N,)
    int64 with ``num_segments`` segments, all-reduced over ``process_group`` if given).

    Outputs: ``y`` and, for the running-statistics update, the per-segment batch statistics
    ``(mean, var, count)`` (empty tensors in eval). Only ``y`` is differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gate, eval_mean, eval_var, segments, num_segments, mix, eps, channels_last, process_group):
        ctx.set_materialize_grads(False)  # no zero gradients made for the statistics outputs
        ctx.flip = nhwc_memory(x, channels_last)
        x, channels_last = (x.permute(0, 2, 3, 1), True) if ctx.flip else (x, channels_last)
        y, seg_mean, seg_var, count, saved = adaptive_forward(
            x, weight, bias, gate, eval_mean, eval_var, segments, num_segments, mix, eps, channels_last, process_group,
        )
        ctx.save_for_backward(*saved)
        ctx.config = (eval_mean is None, num_segments, mix, channels_last, process_group)
        ctx.mark_non_differentiable(seg_mean, seg_var, count)
        return (y.permute(0, 3, 1, 2) if ctx.flip else y), seg_mean, seg_var, count

    @staticmethod
    def backward(ctx, dy, *_):
        if dy is None:  # y took no part in the loss
            return (None,) * 12
        saved = ctx.saved_tensors  # unpacked once (gradient checkpointing allows no second time)
        weight, bias = saved[1], saved[2]
        dy = dy.permute(0, 2, 3, 1) if ctx.flip else dy
        dx, sum_dy_xhat, sum_dy, dgate = adaptive_backward(saved, ctx.config, dy, weight, ctx.needs_input_grad[0],
                                                           ctx.needs_input_grad[3])
        dx = dx.permute(0, 3, 1, 2) if ctx.flip and dx is not None else dx
        dweight = sum_dy_xhat.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy.sum(0).to(dy.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, dgate, None, None, None, None, None, None, None, None


def nhwc_memory(x: Tensor, channels_last: bool) -> bool:
    """An (N, C, H, W) tensor stored channels-last (timm's ConvNeXt LayerNorm2d sites): reduce it
    as the (N, H, W, C) view it is in memory; reductions over strided H, W are many times slower."""
    return not channels_last and not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous()


def adaptive_forward(x, weight, bias, gate, eval_mean, eval_var, segments, num_segments, mix, eps, channels_last,
                     process_group, output: bool = True):
    """The forward of :class:`AdaptiveNormFunction`: ``(y, seg_mean, seg_var, count, saved)``.

    ``saved`` is what :func:`adaptive_backward` needs. ``output=False`` computes the statistics
    only (``y`` is None), for a caller that weights this output by 0.
    """
    # The centred input is the output buffer: one activation-sized allocation for the whole
    # forward (fresh allocations of this size are page-faulted in and cost more than a pass).
    out, mean_in, var_in = _centred_instance_stats(x, channels_last, keep=output)
    cd = mean_in.dtype
    training = eval_mean is None
    if training and _one_local_segment(num_segments, process_group):
        seg_mean, seg_var, count = _whole_batch_stats(mean_in, var_in)
        mean_b, var_b = seg_mean, seg_var  # (1, C): broadcast, no per-sample rows
    elif training:
        seg_mean, seg_var, count = segment_stats(mean_in, var_in, segments, num_segments, process_group)
        mean_b, var_b = rows(seg_mean, segments), rows(seg_var, segments)
    else:
        seg_mean = seg_var = count = mean_in.new_empty(0)
        mean_b = eval_mean.to(cd).expand_as(mean_in)
        var_b = eval_var.to(cd).expand_as(mean_in)
    w = gate.to(cd).clamp(0, 1)
    if mix == "var":  # mix_stats' values as two lerps (this runs in every layer of every step)
        mean, var = torch.lerp(mean_in, mean_b, w), torch.lerp(var_in, var_b, w)
    else:
        mean, var = mix_stats(mean_in, var_in, mean_b, var_b, w, mix)
    rstd = torch.rsqrt(var + eps)
    y = None
    if output:
        scale = rstd if weight is None else rstd * weight.to(cd)
        # y = (x - mu_in) * scale + (mu_in - mu) * scale + bias: the centred form, in place.
        shift = (mean_in - mean) * scale
        if bias is not None:
            shift = shift + bias.to(cd)
        y = out.mul_(per_channel(scale, channels_last)).add_(per_channel(shift, channels_last)).to(x.dtype)
    saved = (x, weight, bias, gate, mean_in, var_in, mean_b, var_b, mean, rstd, segments, count)
    return y, seg_mean, seg_var, count, saved


def adaptive_backward(saved, config, dy, weight, need_dx: bool, need_dgate: bool):
    """Chain rule through normalize -> mix -> batch stats -> instance stats.

    Returns ``(dx or None, sum_L dy * xhat, sum_L dy, dgate or None)``, the two sums per (n, c)
    (their sums over n are the affine gradients). ``weight`` is the affine weight the output
    was scaled by (a caller blending this output passes its share of it).

    With ``g = dy * weight``, ``xhat = (x - mu) * rstd``: ``dmu = -rstd * sum_L g``,
    ``dvar = -rstd^2 / 2 * sum_L g * xhat``. The mix splits them into instance and batch parts
    (``w`` to the batch side); batch stats ``mu_b = mean_n mu_in``,
    ``var_b = mean_n(var_in) + mean_n((mu_in - mu_b)^2)`` give
    ``dmu_in += (D_mu + 2 * D_var * (mu_in - mu_b)) / n_seg`` and ``dvar_in += D_var / n_seg``
    where ``D`` are the batch-side gradients summed over the segment. Finally
    ``dx = g * rstd + dmu_in / L + 2 * dvar_in * (x - mu_in) / (L - 1)``.
    """
    x, _, _, gate, mean_in, var_in, mean_b, var_b, mean, rstd, segments, count = saved
    training, num_segments, mix, channels_last, process_group = config
    cd = mean_in.dtype
    dims = spatial_dims(channels_last)
    L = x.shape[dims[0]] * x.shape[dims[1]]
    dyf = dy.to(cd)
    sum_dy, sum_dy_centred, centred = _gradient_sums(dyf, x, mean_in, channels_last, keep=need_dx)
    sum_dy_xhat = (sum_dy_centred + (mean_in - mean) * sum_dy) * rstd
    if not (need_dx or need_dgate):
        return None, sum_dy_xhat, sum_dy, None
    wt = torch.ones_like(rstd[0]) if weight is None else weight.to(cd)
    dmu = -rstd * wt * sum_dy
    dvar = -0.5 * rstd * rstd * wt * sum_dy_xhat

    w = gate.to(cd).clamp(0, 1)
    if mix == "var":
        d_inst_var, d_batch_var = dvar, dvar
        gate_term = dvar * (var_b - var_in)
    else:  # var = s^2 with s = (1-w) sqrt(var_in) + w sqrt(var_b)
        s_in, s_b = var_in.sqrt(), var_b.sqrt()
        ds = 2 * ((1 - w) * s_in + w * s_b) * dvar
        d_inst_var = _safe_div(ds, 2 * s_in)
        d_batch_var = _safe_div(ds, 2 * s_b)
        gate_term = ds * (s_b - s_in)
    dgate = None
    if need_dgate:
        # As torch.clamp's own gradient (the reference): zero outside (0, 1) and at its ends.
        inside = ((gate > 0) & (gate < 1)).to(cd)
        dgate = ((dmu * (mean_b - mean_in) + gate_term).sum() * inside).to(gate.dtype).reshape(gate.shape)

    dmu_in = (1 - w) * dmu
    dvar_in = (1 - w) * d_inst_var
    if training and _one_local_segment(num_segments, process_group):
        n = x.shape[0]
        seg_dvar = (w * d_batch_var).sum(0, keepdim=True)
        dmu_in = dmu_in + ((w * dmu).sum(0, keepdim=True) + 2 * seg_dvar * (mean_in - mean_b)) / n
        dvar_in = dvar_in + seg_dvar / n
    elif training:
        seg_dmu = _segment_sum(w * dmu, segments, num_segments)
        seg_dvar = _segment_sum(w * d_batch_var, segments, num_segments)
        if process_group is not None:
            all_reduce(process_group, seg_dmu, seg_dvar)
        n_seg = rows(count.clamp(min=1), segments)[:, None]
        seg_dvar = rows(seg_dvar, segments)
        dmu_in = dmu_in + (rows(seg_dmu, segments) + 2 * seg_dvar * (mean_in - mean_b)) / n_seg
        dvar_in = dvar_in + seg_dvar / n_seg

    dx = None
    if need_dx:
        # dx = dy * A + (x - mu_in) * B + c per (n, c). Centring before scaling matters: with a
        # tiny instance variance B is huge and x * B + (c - B * mu_in) cancels catastrophically.
        x_coef = 2 * dvar_in / (L - 1)
        # The dx buffer starts as x - mu_in (one activation-sized allocation for the backward).
        centred = _centred(x, mean_in, channels_last) if centred is None else centred
        dx = centred.mul_(per_channel(x_coef, channels_last)).add_(per_channel(dmu_in / L, channels_last))
        dx = dx.addcmul_(dyf, per_channel(wt * rstd, channels_last)).to(x.dtype)
    return dx, sum_dy_xhat, sum_dy, dgate


def _centred_instance_stats(x: Tensor, channels_last: bool, keep: bool = True):
    """``(x - mu_in, mu_in, var_in)`` in the compute dtype, two passes (the reference's values);
    with ``keep=False`` the centred buffer is squared in place and None is returned for it.

    A plain sum and the squared norm of the centred data are several times faster on CPU than
    ``torch.var_mean``'s Welford loop, and the centred sum of squares has no cancellation.
    """
    dims = spatial_dims(channels_last)
    count = x.shape[dims[0]] * x.shape[dims[1]]
    mean = spatial_sum(x.to(compute_dtype(x.dtype)), channels_last) / count
    centred = _centred(x, mean, channels_last)
    if channels_last and not keep:
        # Each fresh activation-sized buffer costs more than a pass on CPU (page faults): reuse it.
        return None, mean, spatial_sum(centred.square_(), channels_last) / (count - 1)
    if channels_last:
        squares = _sum_product(centred, centred, channels_last)
    else:  # the squared 2-norm: a vectorised reduction with no temporary, unlike product then sum
        squares = torch.linalg.vector_norm(centred.flatten(2), dim=2).square_()
    return centred, mean, squares / (count - 1)


def _centred(x: Tensor, mean: Tensor, channels_last: bool) -> Tensor:
    """A new compute-dtype buffer ``x - mean``; a half-precision input's upcast copy is reused."""
    xf = x.to(compute_dtype(x.dtype))
    if xf is x:
        return x - per_channel(mean, channels_last)
    return xf.sub_(per_channel(mean, channels_last))


def _gradient_sums(dy: Tensor, x: Tensor, mean_in: Tensor, channels_last: bool, keep: bool = True):
    """``(sum_L dy, sum_L dy * (x - mu_in), x - mu_in or None)`` per (n, c), without cancellation.

    For a contiguous NCHW input of the compute dtype both sums come from one pass of BatchNorm's
    own backward reduction, run on the ``(1, N * C, L)`` view (each (n, c) a "channel") with
    ``mu_in`` as its mean and a unit inverse std; otherwise the centred input is made here (and
    returned, to become the dx buffer; with ``keep=False`` it is multiplied by ``dy`` in place
    instead and None is returned).
    """
    n, c = x.shape[0], x.shape[3] if channels_last else x.shape[1]
    if not channels_last and x.dtype == dy.dtype and x.is_contiguous() and dy.is_contiguous():
        flat = (1, n * c, -1)
        _, sum_dy_centred, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy.view(flat), x.view(flat), None, None, None, mean_in.reshape(-1),
            torch.ones(n * c, dtype=mean_in.dtype, device=x.device), True, 0.0, [False, True, True],
        )
        return sum_dy.view(n, c), sum_dy_centred.view(n, c), None
    centred = _centred(x, mean_in, channels_last)
    if not keep:
        return spatial_sum(dy, channels_last), spatial_sum(centred.mul_(dy), channels_last), None
    return spatial_sum(dy, channels_last), _sum_product(dy, centred, channels_last), centred


def _sum_product(a: Tensor, b: Tensor, channels_last: bool) -> Tensor:
    """``sum_L a * b`` per (n, c) without an activation-sized temporary where the layout allows."""
    n, c = a.shape[0], a.shape[3] if channels_last else a.shape[1]
    if not channels_last and a.is_contiguous() and b.is_contiguous():
        return torch.bmm(a.view(n * c, 1, -1), b.view(n * c, -1, 1)).view(n, c)
    return spatial_sum(a * b, channels_last)


def _one_local_segment(num_segments: int, process_group) -> bool:
    """AIBN's case: the whole local batch is the one segment (most small ops of the generic
    segmented path - one-hot sums, per-sample rows - then drop out; on CPU at the ConvNeXt stage
    3-4 shapes those ops, not the passes over the activation, are most of the layer's time)."""
    return num_segments == 1 and process_group is None


def _whole_batch_stats(mean_in: Tensor, var_in: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`segment_stats` for one segment holding every sample: ``(1, C)`` mean and variance
    (``mean(var_in) + mean((mu_in - mu_b)^2)``, the form that does not cancel) and the count."""
    mean = mean_in.mean(0, keepdim=True)
    var = (var_in + (mean_in - mean).square()).mean(0, keepdim=True)
    return mean, var, torch.full((1,), mean_in.shape[0], dtype=mean_in.dtype, device=mean_in.device)


def _segment_sum(values: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    return torch.nn.functional.one_hot(segments, num_segments).to(values.dtype).T @ values


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (a constant feature map has no std gradient)."""
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def adaptive_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Tensor,
    *,
    eval_mean: Optional[Tensor] = None,
    eval_var: Optional[Tensor] = None,
    segments: Optional[Tensor] = None,
    num_segments: int = 1,
    mix: str = "var",
    eps: float = 1e-5,
    channels_last: bool = False,
    process_group=None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Apply :class:`AdaptiveNormFunction`; returns ``(y, seg_mean, seg_var, seg_count)``."""
    if eval_mean is None and segments is None and not _one_local_segment(num_segments, process_group):
        segments = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return AdaptiveNormFunction.apply(
        x, weight, bias, gate, eval_mean, eval_var, segments, num_segments, mix, eps, channels_last, process_group
    )
