"""TNorm forward/backward in Triton: per-camera segmented statistics, conversion, fan-out.

The op contract is documented on :func:`tnorm`; the math is docs/DESIGN.md 3.2 and the reference
is ``timm_reid.layers.functional.tnorm``. What each mode computes is decided once, by
:func:`._contract.tnorm_plan`, for this entry and the reference alike.

Camera ids are an int64 tensor; the per-camera statistics are segmented reductions over the
per-sample statistics inside one finalize launch (no host sync, no sort, cameras absent from the
batch simply have an empty segment and keep their running rows). Launches:

* training, no convert (identity output): instance statistics + finalize (segment statistics and
  running-row update); x is read once.
* convert: instance statistics (training only) + finalize (per-(n, c) scale and shift from the
  source statistics to the target camera's running statistics) + one affine pass: x read twice in
  training, once in eval; y written once. Backward: ``dx = dy * scale`` in one pass.
* ``mode="normalize"``: the segmented core of :mod:`._segment_norm` with the gate fixed to 1.
* fan-out (:func:`tnorm_fanout`): x read once, written converted to all D cameras in one launch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from . import _contract, _utils
from ._apply import apply_affine
from ._distributed import distributed_segment_norm, global_segment_stats, update_rows
from ._segment_norm import segment_norm_forward
from ._stats import finalize, instance_partials, no_partials
from ._utils import check_running, define_op, ncl_view, prune_tile_configs, should_launch, tile_configs

__all__ = ["tnorm", "tnorm_fanout"]


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "D", "stride_xc", "stride_oc"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _fanout_kernel(
    x_ptr,  # (N, C, L) via strides: input, fp32 / fp16 / bf16
    rm_ptr, rv_ptr,  # (D, C) contiguous running mean / var of every camera
    cam_ptr,  # (N,) int64 source camera of each sample
    out_ptr,  # (D, N, C, L) via strides: out[t, n] = x[n] converted from camera cam[n] to camera t
    N, C, L, D,
    eps,  # float (cast to fp32 here)
    stride_xn, stride_xc, stride_xl,
    stride_ot, stride_on, stride_oc, stride_ol,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_l = tl.program_id(0)
    n = tl.program_id(1)
    pid_c = tl.program_id(2)
    eps = tl.cast(eps, tl.float32)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < L)[:, None] & cmask[None, :]
    n64 = n.to(tl.int64)
    x = tl.load(x_ptr + n64 * stride_xn + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
    x = x.to(tl.float32)
    cam = tl.load(cam_ptr + n)
    mu_s = tl.load(rm_ptr + cam * C + cols, mask=cmask, other=0.0).to(tl.float32)
    var_s = tl.load(rv_ptr + cam * C + cols, mask=cmask, other=1.0).to(tl.float32)
    inv_s = 1.0 / tl.sqrt(var_s + eps)
    o_base = out_ptr + n64 * stride_on + rows[:, None] * stride_ol + cols[None, :] * stride_oc
    for t in range(0, D):
        mu_t = tl.load(rm_ptr + t * C + cols, mask=cmask, other=0.0).to(tl.float32)
        var_t = tl.load(rv_ptr + t * C + cols, mask=cmask, other=1.0).to(tl.float32)
        a = tl.sqrt(var_t + eps) * inv_s
        b = mu_t - mu_s * a
        y = x * a[None, :] + b[None, :]
        tl.store(o_base + tl.cast(t, tl.int64) * stride_ot, y.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# torch.library ops
# ---------------------------------------------------------------------------------------------


@define_op("timm_reid::tnorm_convert")
def _tnorm_convert(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    segments: Tensor,
    targets: Tensor,
    num_segments: int,
    training: bool,
    update_running: bool,
    momentum: float,
    eps: float,
    channels_last: bool,
    src_mean: Optional[Tensor] = None,
    src_var: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, scale, new_running_mean, new_running_var)``: every sample re-styled from its source
    statistics (training: the batch statistics of its segment; eval: rows ``segments[n]`` of
    ``src_mean/src_var``, default the running tables) to the running row ``targets[n]``; the running
    statistics are updated (returned, empty otherwise) when ``update_running``."""
    xv, n, c, l, _ = ncl_view(x, channels_last)
    partials = instance_partials(xv, channels_last) if training else no_partials(l, x.device)
    out = finalize(
        partials, segments, num_segments, (n, c, l), training=training, need_instance=training, targets=targets,
        running=(running_mean, running_var), source=(src_mean, src_var), update_running=update_running,
        convert=True, momentum=momentum, eps=eps,
    )
    return apply_affine(xv, out.a, channels_last, c=out.b, like=x), out.a, out.new_rm, out.new_rv


@define_op("timm_reid::tnorm_statistics")
def _tnorm_statistics(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    segments: Tensor,
    num_segments: int,
    momentum: float,
    channels_last: bool,
) -> Tuple[Tensor, Tensor]:
    xv, n, c, l, _ = ncl_view(x, channels_last)
    out = finalize(
        instance_partials(xv, channels_last), segments, num_segments, (n, c, l), training=True,
        need_instance=True, running=(running_mean, running_var), update_running=True, write_coef=False,
        momentum=momentum,
    )
    return out.new_rm, out.new_rv


@define_op("timm_reid::channel_scale")
def _channel_scale(dy: Tensor, scale: Tensor, channels_last: bool) -> Tensor:
    """``dy * scale`` with a per-(n, c) fp32 ``scale``: the backward of the conversion."""
    return apply_affine(dy, scale, channels_last)


def _convert_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.channels_last = inputs[10]


def _convert_backward(ctx, dy, *unused):
    (scale,) = ctx.saved_tensors
    # Source statistics are stop-gradient and targets are running buffers: dx = dy * scale.
    return (_channel_scale(dy, scale, ctx.channels_last),) + (None,) * 12


_tnorm_convert.register_autograd(_convert_backward, setup_context=_convert_setup_context)


@define_op("timm_reid::tnorm_fanout")
def _tnorm_fanout(
    x: Tensor, running_mean: Tensor, running_var: Tensor, camids: Tensor, eps: float, channels_last: bool
) -> Tensor:
    xv, n, c, l, sx = ncl_view(x, channels_last)
    d = running_mean.shape[0]
    if not channels_last and x.dim() == 4 and x.stride(1) == 1 and c > 1:
        # channels-last memory of an NCHW tensor: keep that layout for every target slice
        h, w = x.shape[2], x.shape[3]
        out = torch.empty((d, n, h, w, c), dtype=x.dtype, device=x.device).permute(0, 1, 4, 2, 3)
    else:
        out = torch.empty((d,) + tuple(x.shape), dtype=x.dtype, device=x.device)
    if d > 0:
        _, _, _, _, so = ncl_view(out[0], channels_last)
        if should_launch(xv):
            grid = lambda meta: (triton.cdiv(l, meta["BLOCK_L"]), n, triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
            wrap_triton(_fanout_kernel)[grid](
                xv, running_mean, running_var, camids, out, n, c, l, d, eps, *sx, out.stride(0), *so,
            )
    return out


# ---------------------------------------------------------------------------------------------
# Public entries
# ---------------------------------------------------------------------------------------------


def _check_ids(ids: Tensor, n: int, d: int, name: str) -> None:
    if ids.dim() != 1 or ids.shape[0] != n or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tnorm: {name} must be an int64 tensor of shape ({n},), got {ids.dtype} {tuple(ids.shape)}")
    if not torch.compiler.is_compiling() and ids.numel() and not ids.is_meta:
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(ids)).tolist())  # one host sync
        if lo < 0 or hi >= d:
            raise ValueError(f"tnorm: {name} must lie in [0, {d}) (number of cameras), got range [{lo}, {hi}]")


def _copy_running(running_mean: Tensor, running_var: Tensor, new_rm: Tensor, new_rv: Tensor) -> None:
    with torch.no_grad():
        running_mean.copy_(new_rm)
        running_var.copy_(new_rv)


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
    """Camera-aware transform normalization with the Triton kernels (same contract as
    ``timm_reid.layers.functional.tnorm``, docs/DESIGN.md 3.2).

    * ``x``: ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``channels_last=True``; any strides; fp32 /
      fp16 / bf16 (statistics in fp32). ``running_mean`` / ``running_var``: contiguous ``(D, C)``.
    * ``camids`` / ``targets``: int64 ``(N,)`` in ``[0, D)``.
    * ``mode="transform"``: identity (``x`` itself is returned) unless ``convert``. Training with
      ``camids``: every camera present updates its running row from its own samples' batch
      statistics (in place, after the launches; absent cameras keep their rows). Conversion: source
      statistics are the stop-gradient batch statistics of the sample's camera (whole batch without
      ``camids``) in training, the running row of ``camids[n]`` in eval; the target is the running
      row of ``targets[n]`` as it was *before* this forward's update. Gradient: ``dx = dy * scale``.
    * ``mode="normalize"``: ``weight * (x - mu_cam) / sqrt(var_cam + eps) + bias``; per-camera batch
      statistics with gradient in training (``camids`` required), running rows in eval, rows pooled
      over cameras in eval without ``camids``. Differentiable w.r.t. x, weight, bias.
    * ``process_group``: in training, per-camera batch statistics (and, in ``"normalize"`` mode,
      their gradients) are synchronized over the group: every process gets what one process gets
      on the concatenated batch (eager path, see :mod:`._distributed`); ignored in eval.
    """
    _utils.check_activation(x, channels_last, "tnorm")
    _contract.check_tnorm_mode(mode, "tnorm")
    if running_mean.dim() != 2:
        raise ValueError(f"tnorm: running_mean must be (D, C), got shape {tuple(running_mean.shape)}")
    d, c = running_mean.shape
    check_running(running_mean, d, c, "running_mean", "tnorm")
    check_running(running_var, d, c, "running_var", "tnorm")
    n = x.shape[0]
    if camids is not None:
        _check_ids(camids, n, d, "camids")
    if targets is not None:
        _check_ids(targets, n, d, "targets")
    plan = _contract.tnorm_plan(
        mode, training=training, convert=convert, has_camids=camids is not None, has_targets=targets is not None
    )
    momentum, eps = float(momentum), float(eps)
    if plan == _contract.IDENTITY:
        return x
    if plan == _contract.NORMALIZE:
        return _normalize(x, running_mean, running_var, camids, weight, bias, training, momentum, eps, channels_last,
                          process_group)
    if training and process_group is not None:
        return _distributed_transform(
            x, running_mean, running_var, camids, targets, plan == _contract.CONVERT, momentum, eps, channels_last,
            process_group,
        )
    if plan == _contract.RECORD:
        new_rm, new_rv = _tnorm_statistics(x.detach(), running_mean, running_var, camids, d, momentum, channels_last)
        _copy_running(running_mean, running_var, new_rm, new_rv)
        return x
    # conversion: sources are the batch statistics of each camera (the whole batch without camera ids)
    # in training, the running rows of camids[n] in eval
    segments, num_segments = _contract.segments_or_batch(camids, n, d, x.device)
    update = training and camids is not None
    y, _scale, new_rm, new_rv = _tnorm_convert(
        x, running_mean, running_var, segments, targets, num_segments, training, update, momentum, eps, channels_last,
    )
    if update:
        _copy_running(running_mean, running_var, new_rm, new_rv)
    return y


def _normalize(x, running_mean, running_var, camids, weight, bias, training, momentum, eps, channels_last, group):
    """``mode="normalize"``: per-camera batch statistics in training, running rows in eval (pooled
    over cameras without camera ids)."""
    d = running_mean.shape[0]
    if training:
        if group is not None:
            return distributed_segment_norm(
                x, weight, bias, None, running_mean, running_var, camids, d, momentum=momentum,
                eps=eps, mix_std=False, channels_last=channels_last, group=group,
            )
        outs = segment_norm_forward(
            x, weight, bias, None, running_mean, running_var, camids, d,
            True, True, momentum, eps, False, channels_last,
        )
        _copy_running(running_mean, running_var, outs[7], outs[8])
        return outs[0]
    if camids is not None:
        table_m, table_v, segments, rows = running_mean, running_var, camids, d
    else:
        table_m, table_v = _contract.pooled_stats(running_mean, running_var, keepdim=True)
        segments, rows = _contract.segments_or_batch(None, x.shape[0], d, x.device)
    outs = segment_norm_forward(
        x, weight, bias, None, table_m, table_v, segments, rows,
        False, False, momentum, eps, False, channels_last,
    )
    return outs[0]


def _distributed_transform(x, running_mean, running_var, camids, targets, convert, momentum, eps, channels_last, group):
    """Training ``mode="transform"`` with per-camera statistics synchronized over ``group``."""
    d = running_mean.shape[0]
    segments, num_segments = _contract.segments_or_batch(camids, x.shape[0], d, x.device)
    with torch.no_grad():
        mean_g, var_g, total, _ = global_segment_stats(x.detach(), segments, num_segments, channels_last, group)
    y = x
    if convert:
        # sources: the synchronized (stop-gradient) segment statistics; targets: running rows
        # as they were before this forward's update
        y = _tnorm_convert(
            x, running_mean, running_var, segments, targets, num_segments, False, False, momentum, eps,
            channels_last, mean_g, var_g,
        )[0]
    if camids is not None:
        update_rows(running_mean, mean_g, total, momentum)
        update_rows(running_var, var_g, total, momentum)
    return y


def tnorm_fanout(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    camids: Tensor,
    *,
    eps: float = 1e-5,
    channels_last: bool = False,
) -> Tensor:
    """Eval-mode conversion of every sample to every camera in one launch (IIDS test-time camera
    aggregation): ``out[t, n] = (x[n] - rm[c_n]) / sqrt(rv[c_n] + eps) * sqrt(rv[t] + eps) + rm[t]``
    with ``c_n = camids[n]``. Returns ``(D, *x.shape)`` in ``x``'s dtype (and, for NCHW tensors in
    channels-last memory, the same memory layout per target). Reads ``x`` once instead of ``D``
    times. Inference only: not differentiable.
    """
    _utils.check_activation(x, channels_last, "tnorm_fanout")
    if running_mean.dim() != 2:
        raise ValueError(f"tnorm_fanout: running_mean must be (D, C), got shape {tuple(running_mean.shape)}")
    d, c = running_mean.shape
    check_running(running_mean, d, c, "running_mean", "tnorm_fanout")
    check_running(running_var, d, c, "running_var", "tnorm_fanout")
    _check_ids(camids, x.shape[0], d, "camids")
    return _tnorm_fanout(x, running_mean, running_var, camids, float(eps), channels_last)
