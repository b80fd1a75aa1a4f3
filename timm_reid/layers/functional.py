"""Reference math of AIBN and TNorm: the single source of truth (docs/DESIGN.md section 3).

Plain torch operations, differentiable by autograd. The modules' fast path
(:mod:`timm_reid.layers._autograd`) and the Triton kernels are tested against these functions.

Conventions shared by every function here:

* ``x`` is ``(N, C, H, W)``, or ``(N, H, W, C)`` when ``channels_last=True`` (the NHWC view inside
  timm ConvNeXt blocks). Statistics are per channel over ``L = H * W``.
* Statistics are computed in float32 (float64 stays float64, for gradcheck); the output has the
  input's dtype.
* Instance variance is unbiased (``/(L - 1)``), as in the IICS/IIDS reference code, so ``L == 1``
  is an error rather than a silent NaN.
* Running buffers move as ``r <- (1 - momentum) * r + momentum * stat`` (PyTorch's convention; the
  reference code writes ``0.9`` for the weight of the old value).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from timm_reid.kernels import _contract
from timm_reid.kernels._contract import MIX_MODES, TNORM_MODES, pooled_stats  # noqa: F401 (re-exported)

__all__ = [
    "aibn",
    "tnorm",
    "check_input",
    "instance_stats",
    "segment_stats",
    "mix_stats",
    "pooled_stats",
    "rows",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types and float32, float64 for float64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def check_input(x: Tensor, num_features: int, channels_last: bool, owner: str) -> None:
    """Validate a 4-D activation; raise an error that names the layer, the shape and the fix."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: expected a floating point tensor, got dtype {x.dtype}")
    layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
    if x.dim() != 4:
        raise ValueError(
            f"{owner}: expected a 4-D input {layout}, got shape {tuple(x.shape)}; "
            "reshape the input or use a layer built for its layout"
        )
    channels = x.shape[3] if channels_last else x.shape[1]
    if channels != num_features:
        other_layout = x.shape[1] if channels_last else x.shape[3]
        hint = ""
        if other_layout == num_features:
            hint = f"; the channels sit in the other axis: build the layer with channels_last={not channels_last}"
        raise ValueError(
            f"{owner}: expected {num_features} channels in {layout}, got shape {tuple(x.shape)}{hint}"
        )
    spatial = x.shape[1] * x.shape[2] if channels_last else x.shape[2] * x.shape[3]
    if spatial < 2:
        raise ValueError(
            f"{owner}: instance statistics need at least 2 spatial positions (H*W >= 2), got "
            f"shape {tuple(x.shape)}; the unbiased instance variance is undefined for H*W == 1"
        )


def spatial_dims(channels_last: bool) -> Tuple[int, int]:
    return (1, 2) if channels_last else (2, 3)


def per_channel(stat: Tensor, channels_last: bool) -> Tensor:
    """View an ``(N, C)`` or ``(C,)`` statistic so it broadcasts against the activation."""
    if stat.dim() == 1:
        stat = stat.unsqueeze(0)
    return stat[:, None, None, :] if channels_last else stat[:, :, None, None]


def spatial_sum(t: Tensor, channels_last: bool) -> Tensor:
    """``(N, C)`` sums over the spatial positions (NHWC summed as (N, L, C): far faster on CPU)."""
    if channels_last:
        return t.reshape(t.shape[0], -1, t.shape[3]).sum(1)
    return t.sum((2, 3))


def instance_stats(x: Tensor, channels_last: bool = False) -> Tuple[Tensor, Tensor]:
    """Per-(n, c) mean and unbiased variance over the spatial positions, each ``(N, C)``."""
    xf = x.to(compute_dtype(x.dtype))
    if not channels_last:
        var, mean = torch.var_mean(xf, dim=(2, 3), correction=1)
        return mean, var
    # NHWC: torch's var_mean over the strided middle axes is ~50x slower than plain sums there.
    # Sums of data shifted by one sample per (n, c) keep the variance free of the cancellation
    # that raw E[x^2] - E[x]^2 suffers when |mean| >> std.
    n, h, w, c = xf.shape
    flat = xf.reshape(n, h * w, c)
    shifted = flat - flat[:, :1]
    mean_shifted = shifted.sum(1) / (h * w)
    sq = (shifted * shifted).sum(1)
    var = (sq - h * w * mean_shifted * mean_shifted) / (h * w - 1)
    return mean_shifted + flat[:, 0], var.clamp_min(0)


def segment_stats(
    mean_in: Tensor,
    var_in: Tensor,
    segments: Optional[Tensor] = None,
    num_segments: int = 1,
    process_group=None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Batch statistics of each segment of samples, from per-sample statistics.

    ``mu_s = mean_{n in s} mu_in``, ``var_s = mean_{n in s}(var_in + mu_in^2) - mu_s^2`` (docs/DESIGN.md
    3.1), evaluated in the equivalent form ``mean(var_in) + mean((mu_in - mu_s)^2)`` that does not
    cancel. ``segments`` (N,) assigns samples to segments (camera ids for TNorm); ``None`` puts the
    whole batch in one segment (AIBN). With a ``process_group`` the sums are all-reduced so that
    the result equals one process seeing the concatenated batch.

    Returns ``(mean, var, count)`` of shapes ``(S, C)``, ``(S, C)``, ``(S,)``; empty segments have
    count 0 and mean/var 0.
    """
    if segments is None:
        segments = torch.zeros(mean_in.shape[0], dtype=torch.long, device=mean_in.device)
    # Segment sums as a one-hot matmul: index_add/scatter_add on CPU serialise and cost ~1000x.
    onehot = torch.nn.functional.one_hot(segments, num_segments).to(mean_in.dtype)
    count = onehot.sum(0)
    sums = onehot.T @ mean_in
    if process_group is not None:
        all_reduce(process_group, count, sums)
    denom = count.clamp(min=1)[:, None]
    mean = sums / denom
    second = onehot.T @ (var_in + (mean_in - rows(mean, segments)) ** 2)
    if process_group is not None:
        all_reduce(process_group, second)
    return mean, second / denom, count


def rows(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` along dim 0 (index_select: advanced indexing is far slower on CPU)."""
    return table.index_select(0, index)


def all_reduce(process_group, *tensors: Tensor) -> None:
    """Sum each tensor over ``process_group`` in place: the one collective of the torch path (the
    forward statistics here, their gradients in :mod:`timm_reid.layers._autograd`)."""
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t, group=process_group)


def mix_stats(
    mean_in: Tensor, var_in: Tensor, mean_bn: Tensor, var_bn: Tensor, w: Tensor, mix: str
) -> Tuple[Tensor, Tensor]:
    """Gate mix of instance and batch statistics; ``w`` weights the batch side."""
    mean = (1 - w) * mean_in + w * mean_bn
    if mix == "var":
        var = (1 - w) * var_in + w * var_bn
    elif mix == "std":
        var = ((1 - w) * var_in.sqrt() + w * var_bn.sqrt()) ** 2
    else:
        _contract.check_mix(mix, "mix_stats")
    return mean, var


def normalize_affine(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: float,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    channels_last: bool,
) -> Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` with (N, C) or (C,) statistics."""
    xf = x.to(compute_dtype(x.dtype))
    y = (xf - per_channel(mean, channels_last)) * per_channel(torch.rsqrt(var + eps), channels_last)
    if weight is not None:
        y = y * per_channel(weight.to(y.dtype), channels_last)
    if bias is not None:
        y = y + per_channel(bias.to(y.dtype), channels_last)
    return y.to(x.dtype)


def update_running(running: Tensor, stat: Tensor, momentum: float, rows: Optional[Tensor] = None) -> None:
    """``running <- (1 - momentum) * running + momentum * stat`` (only the rows where the boolean
    mask ``rows`` is set, if given)."""
    stat = stat.detach().to(running.dtype)
    with torch.no_grad():
        if rows is None:
            running.lerp_(stat, momentum)
        else:  # a mask, not indexing: keeps shapes static for compile and export
            running.copy_(torch.where(rows[:, None], torch.lerp(running, stat, momentum), running))


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
    """Adaptive instance-batch normalization (docs/DESIGN.md 3.1; parity target IICS ``AIBNorm2d``).

    ``w = clamp(gate, 0, 1)`` weights the batch statistics. In training the batch statistics come
    from the batch (gradients flow through them) and the running buffers are updated in place when
    given; in eval the running buffers are the batch statistics. ``process_group`` all-reduces the
    batch statistics (forward only: for gradients across ranks use the :class:`~timm_reid.layers.AIBN`
    module, whose analytic backward all-reduces them too).
    """
    _contract.check_mix(mix, "aibn")
    mean_in, var_in = instance_stats(x, channels_last)
    if training:
        mean_bn, var_bn, _ = segment_stats(mean_in, var_in, process_group=process_group)
        if running_mean is not None and running_var is not None:
            update_running(running_mean, mean_bn[0], momentum)
            update_running(running_var, var_bn[0], momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("aibn: eval mode needs running_mean and running_var")
        mean_bn = running_mean.to(mean_in.dtype)[None]
        var_bn = running_var.to(mean_in.dtype)[None]
    w = gate.to(mean_in.dtype).clamp(0, 1)
    mean, var = mix_stats(mean_in, var_in, mean_bn, var_bn, w, mix)
    return normalize_affine(x, mean, var, eps, weight, bias, channels_last)


def tnorm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    *,
    camids: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
    training: bool,
    convert: bool,
    mode: str = "transform",
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channels_last: bool = False,
    process_group=None,
) -> Tensor:
    """Camera-aware transform normalization (docs/DESIGN.md 3.2; parity target IIDS ``TNorm``).

    ``mode="transform"``: identity unless ``convert``; conversion re-styles each sample from its
    source statistics to the running statistics of camera ``targets[n]`` (as they were before this
    forward's update). Source statistics are the (stop-gradient) batch statistics of the sample's
    camera group in training (the whole batch when ``camids`` is None) and the running statistics
    of ``camids[n]`` in eval. In training with ``camids``, each camera present updates its row of
    the running buffers from its own samples.

    ``mode="normalize"``: ``weight * (x - mu_cam) / sqrt(var_cam + eps) + bias`` with per-camera
    batch statistics (with gradient) in training, running ones in eval, and statistics pooled over
    cameras in eval when ``camids`` is None.
    """
    plan = _contract.tnorm_plan(
        mode, training=training, convert=convert, has_camids=camids is not None, has_targets=targets is not None
    )
    if plan == _contract.IDENTITY:
        return x
    num_cameras = running_mean.shape[0]
    # Transform mode uses its statistics only as constants: no graph over them.
    with torch.set_grad_enabled(torch.is_grad_enabled() and mode == "normalize"):
        mean_in, var_in = instance_stats(x, channels_last)
    seg_mean = seg_var = None
    if training and camids is not None:
        seg_mean, seg_var, count = segment_stats(mean_in, var_in, camids, num_cameras, process_group)
    old_mean = running_mean.detach().to(mean_in.dtype).clone()
    old_var = running_var.detach().to(mean_in.dtype).clone()
    if seg_mean is not None:
        present = count > 0
        update_running(running_mean, seg_mean, momentum, present)
        update_running(running_var, seg_var, momentum, present)

    if plan == _contract.NORMALIZE:
        if training:
            mean, var = rows(seg_mean, camids), rows(seg_var, camids)
        elif camids is not None:
            mean, var = rows(old_mean, camids), rows(old_var, camids)
        else:
            mean, var = pooled_stats(old_mean, old_var)
        return normalize_affine(x, mean, var, eps, weight, bias, channels_last)
    if plan == _contract.RECORD:
        return x
    # conversion
    if not training:
        src_mean, src_var = rows(old_mean, camids), rows(old_var, camids)
    elif seg_mean is None:
        src_mean, src_var, _ = segment_stats(mean_in, var_in, process_group=process_group)
        src_mean, src_var = src_mean[0], src_var[0]
    else:
        src_mean, src_var = rows(seg_mean, camids), rows(seg_var, camids)
    src_mean, src_var = src_mean.detach(), src_var.detach()
    # x' = (x - mu_src) / sigma_src * sigma_t + mu_t, folded into one scale and shift per (n, c).
    scale = torch.sqrt(rows(old_var, targets) + eps) * torch.rsqrt(src_var + eps)
    shift = rows(old_mean, targets) - src_mean * scale
    return scale_shift(x, scale, shift, channels_last)


def scale_shift(x: Tensor, scale: Tensor, shift: Tensor, channels_last: bool) -> Tensor:
    """``x * scale + shift`` with per-(n, c) ``scale`` and ``shift`` of shape (N, C)."""
    xf = x.to(compute_dtype(x.dtype))
    return torch.addcmul(per_channel(shift, channels_last), xf, per_channel(scale, channels_last)).to(x.dtype)
