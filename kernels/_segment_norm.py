"""The segmented normalization op that AIBN and TNorm ``mode="normalize"`` share: forward and
backward launchers, the backward kernels, and the ``torch.library`` ops with their autograd.

AIBN is one segment (the whole batch) with a gate; TNorm ``mode="normalize"`` one segment per
camera with the gate fixed to 1 (no gate tensor). The math is on ``timm_reid.layers.functional``
(the reference; tests compare against it, this package never imports it) and docs/DESIGN.md 3.1.

Forward (x read twice, y written once, like a training BatchNorm): the two statistics launches of
:mod:`._stats`, then :func:`._apply.apply_affine` ``y = x * a + b``.

Backward (x and dy read twice each, dx written once):

1. ``_bwd_reduce_kernel``      grid (N, C-blocks, L-splits): partial ``sum dy``, ``sum dy * xhat``.
2. ``_bwd_finalize_kernel``    grid (C-blocks,): dweight, dbias, per-channel dgate partials, and the
   per-(n, c) coefficients of ``dx = A * dy + B * (x - mu_in) + C0``.
3. ``apply_affine``            ``dx = dy * A + (x - mu_in) * B + C0``.

With a process group the backward finalize runs in two phases around an all-reduce of the (S, C)
segment sums (:mod:`._distributed`). Everything besides the activation-sized passes is O(N * C)
fp32 (statistics, coefficients, partials of the L-splits).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._apply import apply_affine
from ._stats import finalize, instance_partials, no_partials
from ._utils import define_op, finalize_blocks, ncl_view, prune_tile_configs, should_launch, split_plan, tile_configs

__all__ = ["segmented_forward", "segmented_backward", "segment_norm_forward", "gate_grad"]


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "chunk", "stride_xc", "stride_gc"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _bwd_reduce_kernel(
    x_ptr,  # (N, C, L) via strides: forward input
    dy_ptr,  # (N, C, L) via strides: gradient of the output
    mean_ptr,  # (N, C) fp32: mixed mean used in forward
    rstd_ptr,  # (N, C) fp32: 1 / sqrt(var + eps) used in forward
    ps1_ptr,  # out (n_split, N, C) fp32: partial sum over L of dy
    ps2_ptr,  # out (n_split, N, C) fp32: partial sum over L of dy * xhat
    N, C, L, chunk,
    stride_xn, stride_xc, stride_xl,
    stride_gn, stride_gc, stride_gl,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    pid_c = tl.program_id(1)
    split = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    n64 = n.to(tl.int64)
    mean = tl.load(mean_ptr + n64 * C + cols, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + n64 * C + cols, mask=cmask, other=0.0)
    l_begin = split * chunk
    l_end = tl.minimum(l_begin + chunk, L)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(l_begin, l_end, BLOCK_L):
        rows = start + tl.arange(0, BLOCK_L)
        mask = (rows < l_end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + n64 * stride_xn + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + n64 * stride_gn + rows[:, None] * stride_gl + cols[None, :] * stride_gc, mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        xhat = (x - mean[None, :]) * rstd[None, :]
        s1 += tl.sum(dy, axis=0)
        s2 += tl.sum(tl.where(mask, dy * xhat, 0.0), axis=0)
    out = (split * N + n).to(tl.int64) * C + cols
    tl.store(ps1_ptr + out, s1, mask=cmask)
    tl.store(ps2_ptr + out, s2, mask=cmask)


@triton.jit
def _bwd_finalize_kernel(
    ps1_ptr, ps2_ptr,  # (n_split, N, C) fp32 partial sums of dy and dy * xhat
    seg_ptr,  # (N,) int64 segment of each sample
    gate_ptr,  # (1,) raw gate (HAS_GATE)
    weight_ptr,  # (C,) affine weight (HAS_WEIGHT)
    mu_in_ptr, var_in_ptr,  # (N, C) fp32 instance statistics (NEED_INSTANCE)
    mu_b_ptr, var_b_ptr,  # (N, C) fp32 batch-side statistics used by each sample
    rstd_ptr,  # (N, C) fp32
    g_mu_ptr, g_var_ptr,  # (N, C) fp32 scratch: dL/dmean and dL/dvar per sample
    seg_gmu_ptr, seg_gvar_ptr,  # (S, C) fp32: per-segment dL/dmu_b / count, dL/dvar_b / count
    # (SEG_MODE 0: scratch; 1: out, raw sums not divided; 2: in, all-reduced and divided)
    coef_a_ptr, coef_b_ptr, coef_c_ptr,  # (N, C) fp32 out: dx = A * dy + B * (x - mu_in) + C0
    dweight_ptr, dbias_ptr,  # (C,) fp32 out
    dgate_ptr,  # (C,) fp32 out: per-channel contribution to dL/dw (summed on the host, fixed order)
    N, C, L, S, n_split,
    TRAINING: tl.constexpr,
    NEED_INSTANCE: tl.constexpr,
    HAS_GATE: tl.constexpr,
    MIX_STD: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SEG_MODE: tl.constexpr,  # 0: local segments; 1: stop after the raw segment sums; 2: sums given
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    if HAS_GATE:
        w = tl.load(gate_ptr).to(tl.float32)
        w = tl.minimum(tl.maximum(w, 0.0), 1.0)
    else:
        w = 1.0
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
    # Pass A: dL/dmean and dL/dvar of each (n, c), parameter gradients, gate gradient.
    _stat_grads(ps1_ptr, ps2_ptr, mu_in_ptr, var_in_ptr, mu_b_ptr, var_b_ptr, rstd_ptr, g_mu_ptr, g_var_ptr,
                dweight_ptr, dbias_ptr, dgate_ptr, gamma, w, cols, cmask, N, C, n_split, HAS_GATE, MIX_STD,
                BLOCK_N, BLOCK_C)
    tl.debug_barrier()

    # Pass B: gradients reaching each segment's batch statistics, divided by the segment size.
    if TRAINING and SEG_MODE != 2:
        _segment_grad_sums(seg_ptr, g_mu_ptr, g_var_ptr, var_in_ptr, var_b_ptr, seg_gmu_ptr, seg_gvar_ptr, w, cols,
                           cmask, N, C, S, HAS_GATE, MIX_STD, SEG_MODE, BLOCK_N, BLOCK_C)
        tl.debug_barrier()

    # Pass C: chain to the instance statistics and fold into dx = A * dy + B * (x - mu_in) + C0.
    if SEG_MODE != 1:
        _bwd_coefficients(
            seg_ptr, g_mu_ptr, g_var_ptr, mu_in_ptr, var_in_ptr, mu_b_ptr, var_b_ptr, rstd_ptr,
            seg_gmu_ptr, seg_gvar_ptr, coef_a_ptr, coef_b_ptr, coef_c_ptr, gamma, w, cols, cmask, N, C, L,
            TRAINING, NEED_INSTANCE, MIX_STD, BLOCK_N, BLOCK_C,
        )




@triton.jit
def _stat_grads(ps1_ptr, ps2_ptr, mu_in_ptr, var_in_ptr, mu_b_ptr, var_b_ptr, rstd_ptr, g_mu_ptr, g_var_ptr,
                dweight_ptr, dbias_ptr, dgate_ptr, gamma, w, cols, cmask, N, C, n_split, HAS_GATE: tl.constexpr,
                MIX_STD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pass A of :func:`_bwd_finalize_kernel` (arguments as there): the L-split partial sums give
    dL/dmean and dL/dvar of each (n, c) (stored for passes B and C), dweight, dbias and the
    per-channel gate gradient."""
    dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_C], dtype=tl.float32)
    dgate = tl.zeros([BLOCK_C], dtype=tl.float32)

    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = (ns < N)[:, None] & cmask[None, :]
        off = ns[:, None].to(tl.int64) * C + cols[None, :]
        s1 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for s in range(0, n_split):
            p_off = off + tl.cast(s, tl.int64) * N * C
            s1 += tl.load(ps1_ptr + p_off, mask=mask, other=0.0)
            s2 += tl.load(ps2_ptr + p_off, mask=mask, other=0.0)
        dbias += tl.sum(s1, axis=0)
        dweight += tl.sum(s2, axis=0)
        rstd = tl.load(rstd_ptr + off, mask=mask, other=0.0)
        # y = gamma * (x - mean) * rstd + beta:
        # dL/dmean = -gamma * rstd * sum dy, dL/dvar = -gamma * rstd^2 / 2 * sum dy * xhat
        g_mu = -gamma[None, :] * rstd * s1
        g_var = -0.5 * gamma[None, :] * rstd * rstd * s2
        tl.store(g_mu_ptr + off, g_mu, mask=mask)
        tl.store(g_var_ptr + off, g_var, mask=mask)
        if HAS_GATE:
            mu_in = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
            var_in = tl.load(var_in_ptr + off, mask=mask, other=0.0)
            mu_b = tl.load(mu_b_ptr + off, mask=mask, other=0.0)
            var_b = tl.load(var_b_ptr + off, mask=mask, other=0.0)
            if MIX_STD:
                sd_in = tl.sqrt(var_in)
                sd_b = tl.sqrt(var_b)
                sigma = (1.0 - w) * sd_in + w * sd_b
                dw = g_mu * (mu_b - mu_in) + g_var * 2.0 * sigma * (sd_b - sd_in)
            else:
                dw = g_mu * (mu_b - mu_in) + g_var * (var_b - var_in)
            dgate += tl.sum(tl.where(mask, dw, 0.0), axis=0)
    tl.store(dweight_ptr + cols, dweight, mask=cmask)
    tl.store(dbias_ptr + cols, dbias, mask=cmask)
    tl.store(dgate_ptr + cols, dgate, mask=cmask)


@triton.jit
def _segment_grad_sums(seg_ptr, g_mu_ptr, g_var_ptr, var_in_ptr, var_b_ptr, seg_gmu_ptr, seg_gvar_ptr, w, cols,
                       cmask, N, C, S, HAS_GATE: tl.constexpr, MIX_STD: tl.constexpr, SEG_MODE: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pass B of :func:`_bwd_finalize_kernel` (arguments as there): per segment, the sums of the
    gradients reaching its batch statistics (SEG_MODE 0: divided by the segment size; 1: raw sums,
    divided after the all-reduce)."""

    for d in range(0, S):
        count = tl.zeros([BLOCK_C], dtype=tl.float32)
        sum_mu = tl.zeros([BLOCK_C], dtype=tl.float32)
        sum_var = tl.zeros([BLOCK_C], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            ns = n0 + tl.arange(0, BLOCK_N)
            seg = tl.load(seg_ptr + ns, mask=ns < N, other=-1)
            member = (seg == d) & (ns < N)
            mask = member[:, None] & cmask[None, :]
            off = ns[:, None].to(tl.int64) * C + cols[None, :]
            g_mu = tl.load(g_mu_ptr + off, mask=mask, other=0.0)
            g_var = tl.load(g_var_ptr + off, mask=mask, other=0.0)
            if MIX_STD:
                var_in = tl.load(var_in_ptr + off, mask=mask, other=1.0)
                var_b = tl.load(var_b_ptr + off, mask=mask, other=1.0)
                sd_b = tl.sqrt(var_b)
                if HAS_GATE:
                    sigma = (1.0 - w) * tl.sqrt(var_in) + w * sd_b
                else:
                    sigma = sd_b
                c_b = tl.where(mask, sigma * w / sd_b, 0.0)
            else:
                c_b = w
            count += tl.sum(member.to(tl.float32), axis=0)
            sum_mu += tl.sum(g_mu, axis=0)
            sum_var += tl.sum(g_var * c_b, axis=0)
        if SEG_MODE == 0:
            inv = 1.0 / tl.maximum(count, 1.0)
        else:
            inv = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
        tl.store(seg_gmu_ptr + d * C + cols, w * sum_mu * inv, mask=cmask)
        tl.store(seg_gvar_ptr + d * C + cols, sum_var * inv, mask=cmask)


@triton.jit
def _bwd_coefficients(
    seg_ptr, g_mu_ptr, g_var_ptr, mu_in_ptr, var_in_ptr, mu_b_ptr, var_b_ptr, rstd_ptr,
    seg_gmu_ptr, seg_gvar_ptr, coef_a_ptr, coef_b_ptr, coef_c_ptr, gamma, w, cols, cmask, N, C, L,
    TRAINING: tl.constexpr, NEED_INSTANCE: tl.constexpr, MIX_STD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Pass C of :func:`_bwd_finalize_kernel` (arguments as there)."""
    inv_l = 1.0 / tl.cast(L, tl.float32)
    two_inv_l1 = 2.0 / tl.cast(L - 1, tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        nmask = ns < N
        mask = nmask[:, None] & cmask[None, :]
        off = ns[:, None].to(tl.int64) * C + cols[None, :]
        rstd = tl.load(rstd_ptr + off, mask=mask, other=0.0)
        coef_a = gamma[None, :] * rstd
        tl.store(coef_a_ptr + off, coef_a, mask=mask)
        if NEED_INSTANCE:
            g_mu = tl.load(g_mu_ptr + off, mask=mask, other=0.0)
            g_var = tl.load(g_var_ptr + off, mask=mask, other=0.0)
            mu_in = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
            var_in = tl.load(var_in_ptr + off, mask=mask, other=1.0)
            if MIX_STD:
                var_b = tl.load(var_b_ptr + off, mask=mask, other=1.0)
                sd_in = tl.sqrt(var_in)
                sigma = (1.0 - w) * sd_in + w * tl.sqrt(var_b)
                c_in = tl.where(mask, sigma * (1.0 - w) / sd_in, 0.0)
            else:
                c_in = 1.0 - w
            d_mu_in = (1.0 - w) * g_mu
            d_var_in = g_var * c_in
            if TRAINING:
                row = tl.load(seg_ptr + ns, mask=nmask, other=0)
                row_off = row[:, None] * C + cols[None, :]
                mu_b = tl.load(mu_b_ptr + off, mask=mask, other=0.0)
                seg_gmu = tl.load(seg_gmu_ptr + row_off, mask=mask, other=0.0)
                seg_gvar = tl.load(seg_gvar_ptr + row_off, mask=mask, other=0.0)
                # mu_b = mean(mu_in), var_b = mean(var_in) + mean((mu_in - mu_b)^2) over the segment
                d_mu_in += seg_gmu + seg_gvar * 2.0 * (mu_in - mu_b)
                d_var_in += seg_gvar
            # mu_in = mean_L x, var_in = sum_L (x - mu_in)^2 / (L - 1)
            coef_b = d_var_in * two_inv_l1
            coef_c = d_mu_in * inv_l
            tl.store(coef_b_ptr + off, coef_b, mask=mask)
            tl.store(coef_c_ptr + off, coef_c, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers (plain functions of real or fake tensors; called inside the torch.library ops)
# ---------------------------------------------------------------------------------------------


def segmented_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    segments: Tensor,
    num_segments: int,
    training: bool,
    update_running: bool,
    momentum: float,
    eps: float,
    mix_std: bool,
    channels_last: bool,
    need_instance: Optional[bool] = None,
    partials: Optional[Tuple[Tensor, Tensor, int, int]] = None,
) -> Tuple[Tensor, ...]:
    """Shared forward of AIBN and TNorm ``mode="normalize"``; see :func:`aibn` for the contract.

    Returns ``(y, mu_in, var_in, mu_b, var_b, mean, rstd, new_running_mean, new_running_var)``;
    the new running stats are ``(S, C)`` (empty when not updated). ``training=False`` takes the
    batch-side statistics from rows ``segments[n]`` of the ``running_*`` tables; the distributed
    path passes all-reduced segment statistics there, with ``need_instance=True`` and the
    ``partials`` of :func:`local_segment_stats` (so x is not reduced twice).
    """
    xv, n, c, l, _ = ncl_view(x, channels_last)
    if need_instance is None:
        need_instance = training or gate is not None
    if partials is None:
        partials = instance_partials(xv, channels_last) if need_instance else no_partials(l, x.device)
    out = finalize(
        partials, segments, num_segments, (n, c, l), training=training, need_instance=need_instance,
        gate=gate, weight=weight, bias=bias, running=(running_mean, running_var), mix_std=mix_std,
        update_running=update_running, momentum=momentum, eps=eps,
    )
    y = apply_affine(xv, out.a, channels_last, c=out.b, like=x)
    return y, out.mu_in, out.var_in, out.mu_b, out.var_b, out.mean, out.rstd, out.new_rm, out.new_rv


def segmented_backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    gate: Optional[Tensor],
    segments: Tensor,
    num_segments: int,
    mu_in: Tensor,
    var_in: Tensor,
    mu_b: Tensor,
    var_b: Tensor,
    mean: Tensor,
    rstd: Tensor,
    training: bool,
    mix_std: bool,
    channels_last: bool,
    all_reduce_segments=None,
) -> Tuple[Tensor, ...]:
    """``(dx, dweight, dbias, dgate)`` of :func:`segmented_forward` (dweight/dbias fp32 (C,),
    dgate fp32 (1,) before the clamp mask)."""
    xv, n, c, l, sx = ncl_view(x, channels_last)
    dyv, _, _, _, sg = ncl_view(dy, channels_last)
    need_instance = training or gate is not None
    n_split, chunk = split_plan(n, c, l, x.device)
    f32 = dict(dtype=torch.float32, device=x.device)
    ps1 = torch.empty((n_split, n, c), **f32)
    ps2 = torch.empty((n_split, n, c), **f32)
    if should_launch(xv, dyv):
        grid = lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]), n_split)  # noqa: E731
        wrap_triton(_bwd_reduce_kernel)[grid](xv, dyv, mean, rstd, ps1, ps2, n, c, l, chunk, *sx, *sg)
    g_mu, g_var, coef_a, coef_b, coef_c = (torch.empty((n, c), **f32) for _ in range(5))
    seg_gmu = torch.empty((num_segments, c), **f32)
    seg_gvar = torch.empty((num_segments, c), **f32)
    dweight, dbias, dgate_c = (torch.empty((c,), **f32) for _ in range(3))
    block_n, block_c, warps = finalize_blocks(n)

    def finalize(seg_mode: int) -> None:
        if should_launch(xv, dyv):
            wrap_triton(_bwd_finalize_kernel)[(triton.cdiv(c, block_c),)](
                ps1, ps2, segments, mu_in if gate is None else gate, mu_in if weight is None else weight,
                mu_in, var_in, mu_b, var_b, rstd, g_mu, g_var, seg_gmu, seg_gvar,
                coef_a, coef_b, coef_c, dweight, dbias, dgate_c,
                n, c, l, num_segments, n_split,
                TRAINING=training, NEED_INSTANCE=need_instance, HAS_GATE=gate is not None, MIX_STD=mix_std,
                HAS_WEIGHT=weight is not None, SEG_MODE=seg_mode, BLOCK_N=block_n, BLOCK_C=block_c,
                num_warps=warps,
            )

    if training and all_reduce_segments is not None:
        # distributed: raw per-segment sums, all-reduced and divided by the global segment sizes
        finalize(1)
        all_reduce_segments(seg_gmu, seg_gvar)
        finalize(2)
    else:
        finalize(0)
    if need_instance:
        dx = apply_affine(dyv, coef_a, channels_last, c=coef_c, v=xv, b=coef_b, m=mu_in, like=x)
    else:
        dx = apply_affine(dyv, coef_a, channels_last, like=x)
    dgate = dgate_c.sum().reshape(1)
    return dx, dweight, dbias, dgate


# ---------------------------------------------------------------------------------------------
# torch.library ops and autograd
# ---------------------------------------------------------------------------------------------


@define_op("timm_reid::segment_norm_forward")
def segment_norm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    segments: Tensor,
    num_segments: int,
    training: bool,
    update_running: bool,
    momentum: float,
    eps: float,
    mix_std: bool,
    channels_last: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return segmented_forward(
        x, weight, bias, gate, running_mean, running_var, segments, num_segments,
        training, update_running, momentum, eps, mix_std, channels_last,
    )


@define_op("timm_reid::segment_norm_backward")
def _segment_norm_backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    gate: Optional[Tensor],
    segments: Tensor,
    num_segments: int,
    mu_in: Tensor,
    var_in: Tensor,
    mu_b: Tensor,
    var_b: Tensor,
    mean: Tensor,
    rstd: Tensor,
    training: bool,
    mix_std: bool,
    channels_last: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return segmented_backward(
        dy, x, weight, gate, segments, num_segments, mu_in, var_in, mu_b, var_b, mean, rstd,
        training, mix_std, channels_last,
    )


def _setup_context(ctx, inputs, output) -> None:
    (x, weight, bias, gate, _rm, _rv, segments, num_segments, training, _upd, _m, _eps, mix_std,
     channels_last) = inputs
    _y, mu_in, var_in, mu_b, var_b, mean, rstd, _nrm, _nrv = output
    ctx.save_for_backward(x, weight, gate, segments, mu_in, var_in, mu_b, var_b, mean, rstd)
    ctx.num_segments = num_segments
    ctx.training = training
    ctx.mix_std = mix_std
    ctx.channels_last = channels_last
    ctx.has_bias = bias is not None
    ctx.bias_dtype = None if bias is None else bias.dtype


def gate_grad(gate: Optional[Tensor], dgate: Tensor) -> Optional[Tensor]:
    """dL/dgate from dL/dw: ``w = clamp(gate, 0, 1)`` passes the gradient strictly inside (0, 1),
    torch.clamp's rule (torch 2.x gives a zero gradient at the bounds themselves)."""
    if gate is None:
        return None
    inside = (gate > 0) & (gate < 1)
    return torch.where(inside, dgate.reshape(gate.shape), torch.zeros_like(gate, dtype=dgate.dtype)).to(gate.dtype)


def _backward(ctx, dy, *unused):
    x, weight, gate, segments, mu_in, var_in, mu_b, var_b, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias, dgate = _segment_norm_backward(
        dy, x, weight, gate, segments, ctx.num_segments, mu_in, var_in, mu_b, var_b, mean, rstd,
        ctx.training, ctx.mix_std, ctx.channels_last,
    )
    d_w = None if weight is None else dweight.to(weight.dtype)
    d_b = dbias.to(ctx.bias_dtype) if ctx.has_bias else None
    return dx, d_w, d_b, gate_grad(gate, dgate), None, None, None, None, None, None, None, None, None, None


segment_norm_forward.register_autograd(_backward, setup_context=_setup_context)
