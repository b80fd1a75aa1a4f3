"""The blended norm ``y = (1 - b) * base(x) + b * AIBN(x)`` in one read (``BlendedAIBN`` on the Triton
backend): kernels, launchers, the ``torch.library`` ops with their autograd, and the entry :func:`blend`.

``b = clamp(blend, 0, 1)`` in value with the gradient of the identity (straight-through, as
``timm_reid.layers.blend.BlendedAIBN.blend_weight``); both branches share ``weight`` and ``bias``;
AIBN's running statistics are the only buffers (a BatchNorm base reads them in eval).

Forward, ``base="layernorm"`` (over C at each position, timm ConvNeXt), x read twice, y written once:

1. ``_ln_stats_kernel``   grid (N, L-splits), one program spans all C of its positions: the
   per-position LayerNorm mean / rstd AND AIBN's per-(n, c) Chan partials from the same tiles.
2. ``_stats.finalize``     AIBN's instance / batch statistics, running update, gate mix, per-(n, c)
   mixed ``mean, rstd`` (the partials of step 1 are its L-splits).
3. ``_ln_apply_kernel``   ``y = gamma * ((1 - b) (x - m_l) r_l + b (x - mean) rstd) + beta``.

Forward, ``base="batchnorm"``: BatchNorm's batch statistics are the per-channel combination of the
instance statistics (``mean = mean_n mu_in``, ``var = mean_n ((L-1)/L var_in + (mu_in - mean)^2)``),
so no extra pass: ``instance_partials`` + ``finalize`` + ``_bn_coef_kernel`` (grid C-blocks: BN
statistics and the folded per-(n, c) ``A, K``) + ``_centred_apply_kernel`` ``y = (x - mu_in) * A + K``
(centred on the instance mean: no cancellation of large offsets).

Backward (x and dy read twice, dx written once), with AIBN's gradients from the shared
``_bwd_finalize_kernel`` run with the weight pre-scaled by ``b``:

* layernorm: ``_ln_bwd_reduce_kernel`` (grid (N, L-splits), all C per program: per-position
  ``P1 = sum_c gamma dy``, ``P2 = sum_c gamma dy xhat_ln`` and per-(n, c) ``sum dy``, ``sum dy xhat_aibn``,
  ``sum dy xhat_ln``), ``_bwd_finalize_kernel``, ``_ln_dx_kernel``
  ``dx = A dy + B (x - mu_in) + C0 + (1 - b) r_l (gamma dy - (P1 + P2 xhat_ln) / C)``.
* batchnorm: ``_bwd_reduce_kernel`` (AIBN's), ``_bwd_finalize_kernel``, ``_bn_bwd_kernel`` (grid
  C-blocks: BN's per-channel sums from the same per-(n, c) sums, folded into A, B, C0), ``apply_affine``.

``dblend = sum_c gamma_c (S_aibn - S_base)_c`` with ``S = sum dy * xhat`` (beta cancels),
``dweight = (1 - b) S_base + b S_aibn``, ``dbias = sum dy``.

Limits: a LayerNorm base needs C <= 1024 (all channels of a position in one tile; timm ConvNeXt-T..B
have C <= 1024); above that :func:`blend` runs the composition (AIBN kernels + ``F.layer_norm`` +
``lerp``). The distributed case (``process_group``) is not fused: ``BlendedAIBN`` takes the
composition there. Everything besides the activation-sized passes is fp32 statistics of O(N * C)
(times the L-splits for the LayerNorm partials) or O(N * L).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from . import _utils
from ._apply import apply_affine
from ._contract import check_mix
from ._segment_norm import _bwd_finalize_kernel, _bwd_reduce_kernel, gate_grad
from ._stats import finalize, instance_partials
from ._utils import define_op, finalize_blocks, ncl_view, prune_tile_configs, should_launch, split_plan, tile_configs

__all__ = ["blend", "BASES", "MAX_LAYERNORM_C"]

BASES = ("layernorm", "batchnorm")
# A LayerNorm base keeps all channels of a position in one tile (registers); wider layers fall back.
MAX_LAYERNORM_C = 1024


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _ln_stats_kernel(
    x_ptr,  # (N, C, L) activation via strides; fp32 / fp16 / bf16
    pmean_ptr,  # out (n_split, N, C) fp32: per-(n, c) mean of each L-chunk (AIBN's instance partials)
    pm2_ptr,  # out (n_split, N, C) fp32: sum of squared deviations from that chunk mean
    ln_mean_ptr,  # out (N, L) fp32: LayerNorm mean over C at each position
    ln_rstd_ptr,  # out (N, L) fp32: 1 / sqrt(biased var over C + eps)
    N, C, L,  # batch, channels, positions H * W
    chunk,  # positions per program (a multiple of BLOCK_L; the last split may be shorter)
    stride_xn, stride_xc, stride_xl,  # strides of x in elements
    eps,  # float (cast to fp32 here)
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= C: one tile spans every channel
):
    n = tl.program_id(0)
    split = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    c_f = tl.cast(C, tl.float32)
    eps = tl.cast(eps, tl.float32)
    l_begin = split * chunk
    l_end = tl.minimum(l_begin + chunk, L)
    n64 = n.to(tl.int64)
    x_base = x_ptr + n64 * stride_xn
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(l_begin, l_end, BLOCK_L):
        rows = start + tl.arange(0, BLOCK_L)
        rmask = rows < l_end
        mask = rmask[:, None] & cmask[None, :]
        xt = tl.load(x_base + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
        xt = xt.to(tl.float32)
        # LayerNorm statistics of each position: all C in the tile, exact two-pass in registers.
        row_mean = tl.sum(xt, axis=1) / c_f
        rdev = tl.where(mask, xt - row_mean[:, None], 0.0)
        row_rstd = 1.0 / tl.sqrt(tl.sum(rdev * rdev, axis=1) / c_f + eps)
        tl.store(ln_mean_ptr + n64 * L + rows, row_mean, mask=rmask)
        tl.store(ln_rstd_ptr + n64 * L + rows, row_rstd, mask=rmask)
        # AIBN's instance partials of the same tile: Chan, as _stats._instance_stats_kernel.
        count_a = (start - l_begin).to(tl.float32)
        count_b = tl.minimum(l_end - start, BLOCK_L).to(tl.float32)
        tile_mean = tl.sum(xt, axis=0) / count_b
        dev = tl.where(mask, xt - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, axis=0)
        total = count_a + count_b
        delta = tile_mean - mean
        mean = mean + delta * (count_b / total)
        m2 = m2 + tile_m2 + delta * delta * (count_a * count_b / total)
    out = (split * N + n).to(tl.int64) * C + cols
    tl.store(pmean_ptr + out, mean, mask=cmask)
    tl.store(pm2_ptr + out, m2, mask=cmask)


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "stride_xc", "stride_oc"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _ln_apply_kernel(
    x_ptr,  # (N, C, L) via strides: input
    ln_mean_ptr, ln_rstd_ptr,  # (N, L) fp32: LayerNorm statistics of each position
    mean_ptr, rstd_ptr,  # (N, C) fp32: AIBN's mixed mean and rstd, AIBN(x) = gamma (x - mean) rstd + beta
    weight_ptr, bias_ptr,  # (C,) shared affine (HAS_WEIGHT / HAS_BIAS)
    blend_ptr,  # (1,) raw blend weight (b = clamp(blend, 0, 1))
    out_ptr,  # (N, C, L) via strides: y in out's dtype
    N, C, L,
    stride_xn, stride_xc, stride_xl,
    stride_on, stride_oc, stride_ol,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_l = tl.program_id(0)
    n = tl.program_id(1)
    pid_c = tl.program_id(2)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < L
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    n64 = n.to(tl.int64)
    b = tl.load(blend_ptr).to(tl.float32)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    x = tl.load(x_ptr + n64 * stride_xn + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
    x = x.to(tl.float32)
    m = tl.load(ln_mean_ptr + n64 * L + rows, mask=rmask, other=0.0)
    r = tl.load(ln_rstd_ptr + n64 * L + rows, mask=rmask, other=0.0)
    mean_a = tl.load(mean_ptr + n64 * C + cols, mask=cmask, other=0.0)
    rstd_a = tl.load(rstd_ptr + n64 * C + cols, mask=cmask, other=0.0)
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
    if HAS_BIAS:
        beta = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        beta = tl.zeros([BLOCK_C], dtype=tl.float32)
    # both branches centred on their own means (no cancellation of large offsets)
    xhat = (1.0 - b) * ((x - m[:, None]) * r[:, None]) + b * ((x - mean_a[None, :]) * rstd_a[None, :])
    out = xhat * gamma[None, :] + beta[None, :]
    o_ptrs = out_ptr + n64 * stride_on + rows[:, None] * stride_ol + cols[None, :] * stride_oc
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_coef_kernel(
    mu_in_ptr, var_in_ptr,  # (N, C) fp32 instance mean, unbiased instance variance
    seg_mean_ptr,  # (1, C) fp32 batch mean (TRAINING; AIBN's, = BatchNorm's)
    rm_ptr, rv_ptr,  # (C,) running statistics (eval: BatchNorm's statistics)
    weight_ptr, bias_ptr,  # (C,) shared affine (HAS_WEIGHT / HAS_BIAS)
    blend_ptr,  # (1,) raw blend weight
    mean_ptr, rstd_ptr,  # (N, C) fp32 AIBN's mixed mean and rstd
    a_ptr, k_ptr,  # (N, C) fp32 out: y = (x - mu_in) * A + K
    bn_mean_ptr, bn_rstd_ptr,  # (C,) fp32 out: BatchNorm mean and 1 / sqrt(biased var + eps)
    N, C, L, eps,
    TRAINING: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    eps = tl.cast(eps, tl.float32)
    b = tl.load(blend_ptr).to(tl.float32)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
    if HAS_BIAS:
        beta = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        beta = tl.zeros([BLOCK_C], dtype=tl.float32)
    if TRAINING:
        # biased variance over N * L from the instance statistics: sum_n ((L-1) var_in + L (mu_in - mu)^2) / (N L)
        mu = tl.load(seg_mean_ptr + cols, mask=cmask, other=0.0)
        shrink = tl.cast(L - 1, tl.float32) / tl.cast(L, tl.float32)
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            ns = n0 + tl.arange(0, BLOCK_N)
            mask = (ns < N)[:, None] & cmask[None, :]
            off = ns[:, None].to(tl.int64) * C + cols[None, :]
            mu_in = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
            var_in = tl.load(var_in_ptr + off, mask=mask, other=0.0)
            dev = tl.where(mask, mu_in - mu[None, :], 0.0)
            acc += tl.sum(var_in * shrink + dev * dev, axis=0)
        var = acc / tl.cast(N, tl.float32)
    else:
        mu = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        var = tl.load(rv_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(bn_mean_ptr + cols, mu, mask=cmask)
    tl.store(bn_rstd_ptr + cols, rstd, mask=cmask)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = (ns < N)[:, None] & cmask[None, :]
        off = ns[:, None].to(tl.int64) * C + cols[None, :]
        mu_in = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
        mean_a = tl.load(mean_ptr + off, mask=mask, other=0.0)
        rstd_a = tl.load(rstd_ptr + off, mask=mask, other=0.0)
        # y = gamma ((1 - b) (x - mu) rstd + b (x - mean_a) rstd_a) + beta, written around x = mu_in
        a = gamma[None, :] * ((1.0 - b) * rstd[None, :] + b * rstd_a)
        k = gamma[None, :] * ((1.0 - b) * rstd[None, :] * (mu_in - mu[None, :]) + b * rstd_a * (mu_in - mean_a))
        tl.store(a_ptr + off, a, mask=mask)
        tl.store(k_ptr + off, k + beta[None, :], mask=mask)


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "stride_xc", "stride_oc"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _centred_apply_kernel(
    x_ptr,  # (N, C, L) via strides: input
    m_ptr, a_ptr, k_ptr,  # (N, C) fp32: out = (x - m) * a + k
    out_ptr,  # (N, C, L) via strides: out, in out's dtype
    N, C, L,
    stride_xn, stride_xc, stride_xl,
    stride_on, stride_oc, stride_ol,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_l = tl.program_id(0)
    n = tl.program_id(1)
    pid_c = tl.program_id(2)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < L)[:, None] & cmask[None, :]
    n64 = n.to(tl.int64)
    x = tl.load(x_ptr + n64 * stride_xn + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
    m = tl.load(m_ptr + n64 * C + cols, mask=cmask, other=0.0)
    a = tl.load(a_ptr + n64 * C + cols, mask=cmask, other=0.0)
    k = tl.load(k_ptr + n64 * C + cols, mask=cmask, other=0.0)
    out = (x.to(tl.float32) - m[None, :]) * a[None, :] + k[None, :]
    o_ptrs = out_ptr + n64 * stride_on + rows[:, None] * stride_ol + cols[None, :] * stride_oc
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ln_bwd_reduce_kernel(
    x_ptr,  # (N, C, L) via strides: forward input
    dy_ptr,  # (N, C, L) via strides: gradient of the output
    ln_mean_ptr, ln_rstd_ptr,  # (N, L) fp32 LayerNorm statistics
    mean_ptr, rstd_ptr,  # (N, C) fp32 AIBN's mixed mean and rstd
    weight_ptr,  # (C,) (HAS_WEIGHT)
    ps1_ptr,  # out (n_split, N, C) fp32: partial sum over L of dy
    ps2_ptr,  # out (n_split, N, C) fp32: partial sum of dy * xhat_aibn
    ps3_ptr,  # out (n_split, N, C) fp32: partial sum of dy * xhat_ln
    p1_ptr, p2_ptr,  # out (N, L) fp32: sum_c gamma dy and sum_c gamma dy xhat_ln at each position
    N, C, L, chunk,
    stride_xn, stride_xc, stride_xl,
    stride_gn, stride_gc, stride_gl,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= C
):
    n = tl.program_id(0)
    split = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    n64 = n.to(tl.int64)
    mean_a = tl.load(mean_ptr + n64 * C + cols, mask=cmask, other=0.0)
    rstd_a = tl.load(rstd_ptr + n64 * C + cols, mask=cmask, other=0.0)
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        gamma = tl.where(cmask, 1.0, 0.0)
    l_begin = split * chunk
    l_end = tl.minimum(l_begin + chunk, L)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(l_begin, l_end, BLOCK_L):
        rows = start + tl.arange(0, BLOCK_L)
        rmask = rows < l_end
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + n64 * stride_xn + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + n64 * stride_gn + rows[:, None] * stride_gl + cols[None, :] * stride_gc, mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        m = tl.load(ln_mean_ptr + n64 * L + rows, mask=rmask, other=0.0)
        r = tl.load(ln_rstd_ptr + n64 * L + rows, mask=rmask, other=0.0)
        xhat_ln = tl.where(mask, (x - m[:, None]) * r[:, None], 0.0)
        g = dy * gamma[None, :]
        tl.store(p1_ptr + n64 * L + rows, tl.sum(g, axis=1), mask=rmask)
        tl.store(p2_ptr + n64 * L + rows, tl.sum(g * xhat_ln, axis=1), mask=rmask)
        xhat_a = tl.where(mask, (x - mean_a[None, :]) * rstd_a[None, :], 0.0)
        s1 += tl.sum(dy, axis=0)
        s2 += tl.sum(dy * xhat_a, axis=0)
        s3 += tl.sum(dy * xhat_ln, axis=0)
    out = (split * N + n).to(tl.int64) * C + cols
    tl.store(ps1_ptr + out, s1, mask=cmask)
    tl.store(ps2_ptr + out, s2, mask=cmask)
    tl.store(ps3_ptr + out, s3, mask=cmask)


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "stride_xc", "stride_gc", "stride_oc"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _ln_dx_kernel(
    x_ptr, dy_ptr,  # (N, C, L) via strides: forward input, gradient of the output
    ln_mean_ptr, ln_rstd_ptr, p1_ptr, p2_ptr,  # (N, L) fp32: LayerNorm statistics and per-position sums
    coef_a_ptr, coef_b_ptr, mu_in_ptr, coef_c_ptr,  # (N, C) fp32: AIBN's dx = A dy + B (x - mu_in) + C0
    # (from _bwd_finalize_kernel with the weight b * gamma)
    weight_ptr,  # (C,) (HAS_WEIGHT)
    blend_ptr,  # (1,) raw blend weight
    dx_ptr,  # (N, C, L) via strides: out, dx's dtype
    N, C, L,
    stride_xn, stride_xc, stride_xl,
    stride_gn, stride_gc, stride_gl,
    stride_on, stride_oc, stride_ol,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_l = tl.program_id(0)
    n = tl.program_id(1)
    pid_c = tl.program_id(2)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < L
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    n64 = n.to(tl.int64)
    b = tl.load(blend_ptr).to(tl.float32)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    inv_c = 1.0 / tl.cast(C, tl.float32)
    x = tl.load(x_ptr + n64 * stride_xn + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + n64 * stride_gn + rows[:, None] * stride_gl + cols[None, :] * stride_gc, mask=mask, other=0.0)
    x = x.to(tl.float32)
    dy = dy.to(tl.float32)
    lo = n64 * L + rows
    m = tl.load(ln_mean_ptr + lo, mask=rmask, other=0.0)
    r = tl.load(ln_rstd_ptr + lo, mask=rmask, other=0.0)
    p1 = tl.load(p1_ptr + lo, mask=rmask, other=0.0)
    p2 = tl.load(p2_ptr + lo, mask=rmask, other=0.0)
    co = n64 * C + cols
    ca = tl.load(coef_a_ptr + co, mask=cmask, other=0.0)
    cb = tl.load(coef_b_ptr + co, mask=cmask, other=0.0)
    mu = tl.load(mu_in_ptr + co, mask=cmask, other=0.0)
    cc = tl.load(coef_c_ptr + co, mask=cmask, other=0.0)
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
    xhat = (x - m[:, None]) * r[:, None]
    # LayerNorm: dx = r (gamma dy - mean_c(gamma dy) - xhat mean_c(gamma dy xhat))
    d_ln = r[:, None] * (gamma[None, :] * dy - (p1[:, None] + p2[:, None] * xhat) * inv_c)
    out = dy * ca[None, :] + (x - mu[None, :]) * cb[None, :] + cc[None, :] + (1.0 - b) * d_ln
    o_ptrs = dx_ptr + n64 * stride_on + rows[:, None] * stride_ol + cols[None, :] * stride_oc
    tl.store(o_ptrs, out.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_bwd_kernel(
    ps1_ptr, ps2_ptr,  # (n_split, N, C) fp32 partial sums of dy and dy * xhat_aibn
    mean_ptr, rstd_ptr,  # (N, C) fp32 AIBN's mixed mean and rstd
    mu_in_ptr,  # (N, C) fp32 instance mean (centre of dx's x term)
    bn_mean_ptr, bn_rstd_ptr,  # (C,) fp32 BatchNorm statistics of the forward
    weight_ptr,  # (C,) (HAS_WEIGHT)
    blend_ptr,  # (1,) raw blend weight
    coef_a_ptr, coef_b_ptr, coef_c_ptr,  # (N, C) fp32 in: AIBN's dx coefficients (weight b * gamma); out: the blend's
    dweight_ptr,  # (C,) fp32 in: sum dy * xhat_aibn; out: (1 - b) S_bn + b S_aibn
    dblend_ptr,  # (C,) fp32 out: gamma * (S_aibn - S_bn) per channel (summed on the host, fixed order)
    N, C, L, n_split,
    TRAINING: tl.constexpr,  # batch statistics (gradient through them) or running statistics
    HAS_WEIGHT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    b = tl.load(blend_ptr).to(tl.float32)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
    mu_bn = tl.load(bn_mean_ptr + cols, mask=cmask, other=0.0)
    r_bn = tl.load(bn_rstd_ptr + cols, mask=cmask, other=0.0)
    # S1 = sum dy, S_bn = sum dy (x - mu_bn) r_bn = r_bn (s2 / rstd_a + (mean_a - mu_bn) s1) per (n, c)
    s1_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    sbn_c = tl.zeros([BLOCK_C], dtype=tl.float32)
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
        mean_a = tl.load(mean_ptr + off, mask=mask, other=0.0)
        rstd_a = tl.load(rstd_ptr + off, mask=mask, other=1.0)
        s1_c += tl.sum(s1, axis=0)
        sbn_c += tl.sum(tl.where(mask, s2 / rstd_a + (mean_a - mu_bn[None, :]) * s1, 0.0), axis=0)
    sbn_c = sbn_c * r_bn
    s_aibn = tl.load(dweight_ptr + cols, mask=cmask, other=0.0)
    tl.store(dweight_ptr + cols, (1.0 - b) * sbn_c + b * s_aibn, mask=cmask)
    tl.store(dblend_ptr + cols, tl.where(cmask, gamma * (s_aibn - sbn_c), 0.0), mask=cmask)
    # dx_bn = k dy + kb (x - mu_bn) + kc, k = gamma r_bn; training: kb = -k r_bn S_bn / (N L), kc = -k S1 / (N L)
    k = (1.0 - b) * gamma * r_bn
    if TRAINING:
        inv_count = 1.0 / (tl.cast(N, tl.float32) * tl.cast(L, tl.float32))
        kb = -k * r_bn * sbn_c * inv_count
        kc = -k * s1_c * inv_count
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = (ns < N)[:, None] & cmask[None, :]
        off = ns[:, None].to(tl.int64) * C + cols[None, :]
        ca = tl.load(coef_a_ptr + off, mask=mask, other=0.0)
        tl.store(coef_a_ptr + off, ca + k[None, :], mask=mask)
        if TRAINING:
            cb = tl.load(coef_b_ptr + off, mask=mask, other=0.0)
            cc = tl.load(coef_c_ptr + off, mask=mask, other=0.0)
            mu_in = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
            # (x - mu_bn) = (x - mu_in) + (mu_in - mu_bn): dx keeps apply_affine's centre mu_in
            tl.store(coef_b_ptr + off, cb + kb[None, :], mask=mask)
            tl.store(coef_c_ptr + off, cc + kb[None, :] * (mu_in - mu_bn[None, :]) + kc[None, :], mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers (plain functions of real or fake tensors; called inside the torch.library ops)
# ---------------------------------------------------------------------------------------------

# Under the interpreter: 4-position tiles, 8-position chunks (several tiles per program, ragged splits).
_INTERPRET_LN_PLAN = (4, 8)
# Fewest positions per L-split of the LayerNorm plan (bounds the partials' traffic at small maps).
_MIN_LN_CHUNK = 16


def layernorm_plan(
    n: int, c: int, l: int, spatial_fast: bool, device: torch.device
) -> Optional[Tuple[int, int, int, int, int]]:
    """``(BLOCK_L, BLOCK_C, chunk, n_split, num_warps)`` of the all-channel kernels of a LayerNorm
    base (one program: all C of ``chunk`` positions), or None when C > :data:`MAX_LAYERNORM_C`.

    Tiles hold ~2048 elements (4096 when positions are contiguous in memory, NCHW: longer rows
    per channel); L is split so the (N, split) grid fills the GPU (about 4 programs per SM), into
    chunks of at least :data:`_MIN_LN_CHUNK` positions: each split writes 8 bytes of partials per
    (n, c), ``8 / chunk`` bytes per element (ConvNeXt-T stage 4, L = 32: 2 splits of 16, 0.5 B per
    element, where filling 132 SMs would take 8 splits of 4 and cost 2 B). Untuned: a choice for
    an H100 run.
    """
    block_c = triton.next_power_of_2(c)
    if block_c > MAX_LAYERNORM_C:
        return None
    if _utils.INTERPRET and device.type == "cpu":
        block_l, chunk = _INTERPRET_LN_PLAN
    else:
        block_l = max(1, min(triton.next_power_of_2(l), (4096 if spatial_fast else 2048) // block_c))
        target = 4 * _utils._num_sms(device)
        want = max(1, min(triton.cdiv(target, max(n, 1)), triton.cdiv(l, block_l)))
        chunk = triton.cdiv(max(triton.cdiv(l, want), _MIN_LN_CHUNK), block_l) * block_l
    chunk = max(1, min(chunk, triton.cdiv(l, block_l) * block_l))
    warps = 1 if _utils.INTERPRET else (4 if block_l * block_c <= 1024 else 8)
    return block_l, block_c, chunk, triton.cdiv(l, chunk), warps


def _blend_forward_impl(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], gate: Tensor, blend: Tensor,
    running_mean: Optional[Tensor], running_var: Optional[Tensor], base: str, training: bool,
    update_running: bool, momentum: float, eps: float, mix_std: bool, channels_last: bool,
) -> Tuple[Tensor, ...]:
    xv, n, c, l, sx = ncl_view(x, channels_last)
    segments = torch.zeros(n, dtype=torch.int64, device=x.device)
    f32 = dict(dtype=torch.float32, device=x.device)
    if base == "layernorm":
        block_l, block_c, chunk, n_split, warps = layernorm_plan(n, c, l, sx[2] == 1, x.device)
        pmean, pm2 = (torch.empty((n_split, n, c), **f32) for _ in range(2))
        base_mean, base_rstd = (torch.empty((n, l), **f32) for _ in range(2))
        if should_launch(xv):
            wrap_triton(_ln_stats_kernel)[(n, n_split)](
                xv, pmean, pm2, base_mean, base_rstd, n, c, l, chunk, *sx, eps,
                BLOCK_L=block_l, BLOCK_C=block_c, num_warps=warps,
            )
        partials = (pmean, pm2, n_split, chunk)
    else:
        partials = instance_partials(xv, channels_last)
        base_mean, base_rstd = (torch.empty((c,), **f32) for _ in range(2))
    out = finalize(
        partials, segments, 1, (n, c, l), training=training, need_instance=True, gate=gate, weight=weight,
        bias=bias, running=(running_mean, running_var), update_running=update_running, mix_std=mix_std,
        momentum=momentum, eps=eps,
    )
    if base == "layernorm":
        y = torch.empty_like(x)
        _, _, _, _, so = ncl_view(y, channels_last)
        if should_launch(xv):
            grid = lambda meta: (triton.cdiv(l, meta["BLOCK_L"]), n, triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
            wrap_triton(_ln_apply_kernel)[grid](
                xv, base_mean, base_rstd, out.mean, out.rstd, out.a if weight is None else weight,
                out.a if bias is None else bias, blend, y, n, c, l, *sx, *so,
                HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            )
    else:
        if should_launch(xv):
            block_n, block_cn, warps = finalize_blocks(n)
            warps = warps if _utils.INTERPRET else 8  # 64 x 32 tiles: 64 registers at 8 warps (ptxas, sm_90a)
            wrap_triton(_bn_coef_kernel)[(triton.cdiv(c, block_cn),)](
                out.mu_in, out.var_in, out.seg_mean if training else out.mu_in,
                out.mu_in if running_mean is None else running_mean, out.mu_in if running_var is None else running_var,
                out.mu_in if weight is None else weight, out.mu_in if bias is None else bias, blend,
                out.mean, out.rstd, out.a, out.b, base_mean, base_rstd, n, c, l, eps,
                TRAINING=training, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                BLOCK_N=block_n, BLOCK_C=block_cn, num_warps=warps,
            )
        # out.a, out.b (AIBN's own y = x * a + c, not used by the blend) now hold the blend's A, K
        y = torch.empty_like(x)
        _, _, _, _, so = ncl_view(y, channels_last)
        if should_launch(xv):
            grid = lambda meta: (triton.cdiv(l, meta["BLOCK_L"]), n, triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
            wrap_triton(_centred_apply_kernel)[grid](xv, out.mu_in, out.a, out.b, y, n, c, l, *sx, *so)
    return (y, out.mu_in, out.var_in, out.mu_b, out.var_b, out.mean, out.rstd, base_mean, base_rstd,
            out.new_rm, out.new_rv)


def _blend_backward_impl(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], gate: Tensor, blend: Tensor, mu_in: Tensor, var_in: Tensor,
    mu_b: Tensor, var_b: Tensor, mean: Tensor, rstd: Tensor, base_mean: Tensor, base_rstd: Tensor, base: str,
    training: bool, mix_std: bool, channels_last: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    xv, n, c, l, sx = ncl_view(x, channels_last)
    dyv, _, _, _, sg = ncl_view(dy, channels_last)
    f32 = dict(dtype=torch.float32, device=x.device)
    b = blend.detach().to(torch.float32).clamp(0.0, 1.0)  # (1,), on the device: no host sync
    gamma = torch.ones((c,), **f32) if weight is None else weight.detach().to(torch.float32)
    launch = should_launch(xv, dyv)
    if base == "layernorm":
        block_l, block_c, chunk, n_split, warps = layernorm_plan(n, c, l, sx[2] == 1, x.device)
        ps1, ps2, ps3 = (torch.empty((n_split, n, c), **f32) for _ in range(3))
        p1, p2 = (torch.empty((n, l), **f32) for _ in range(2))
        if launch:
            wrap_triton(_ln_bwd_reduce_kernel)[(n, n_split)](
                xv, dyv, base_mean, base_rstd, mean, rstd, mean if weight is None else weight,
                ps1, ps2, ps3, p1, p2, n, c, l, chunk, *sx, *sg,
                HAS_WEIGHT=weight is not None, BLOCK_L=block_l, BLOCK_C=block_c, num_warps=warps,
            )
    else:
        n_split, chunk = split_plan(n, c, l, x.device)
        ps1, ps2 = (torch.empty((n_split, n, c), **f32) for _ in range(2))
        if launch:
            grid = lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]), n_split)  # noqa: E731
            wrap_triton(_bwd_reduce_kernel)[grid](xv, dyv, mean, rstd, ps1, ps2, n, c, l, chunk, *sx, *sg)
    # AIBN's gradients with the weight pre-scaled by b: its share of dx, dgate; dweight_a = sum dy xhat_aibn
    segments = torch.zeros(n, dtype=torch.int64, device=x.device)
    g_mu, g_var, coef_a, coef_b, coef_c = (torch.empty((n, c), **f32) for _ in range(5))
    seg_gmu, seg_gvar = (torch.empty((1, c), **f32) for _ in range(2))
    dweight, dbias, dgate_c, dblend_c = (torch.empty((c,), **f32) for _ in range(4))
    gamma_b = gamma * b
    block_n, block_cn, fwarps = finalize_blocks(n)
    if launch:
        wrap_triton(_bwd_finalize_kernel)[(triton.cdiv(c, block_cn),)](
            ps1, ps2, segments, gate, gamma_b, mu_in, var_in, mu_b, var_b, rstd, g_mu, g_var, seg_gmu, seg_gvar,
            coef_a, coef_b, coef_c, dweight, dbias, dgate_c, n, c, l, 1, n_split,
            TRAINING=training, NEED_INSTANCE=True, HAS_GATE=True, MIX_STD=mix_std, HAS_WEIGHT=True, SEG_MODE=0,
            BLOCK_N=block_n, BLOCK_C=block_cn, num_warps=fwarps,
        )
    if base == "layernorm":
        dx = torch.empty_like(x)
        _, _, _, _, so = ncl_view(dx, channels_last)
        if launch:
            grid = lambda meta: (triton.cdiv(l, meta["BLOCK_L"]), n, triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
            wrap_triton(_ln_dx_kernel)[grid](
                xv, dyv, base_mean, base_rstd, p1, p2, coef_a, coef_b, mu_in, coef_c,
                mean if weight is None else weight, blend, dx, n, c, l, *sx, *sg, *so, HAS_WEIGHT=weight is not None,
            )
        s_ln = ps3.sum(dim=(0, 1))
        dblend = (gamma * (dweight - s_ln)).sum().reshape(1)
        dweight = torch.lerp(s_ln, dweight, b)
    else:
        if launch:
            wrap_triton(_bn_bwd_kernel)[(triton.cdiv(c, block_cn),)](
                ps1, ps2, mean, rstd, mu_in, base_mean, base_rstd, mean if weight is None else weight, blend,
                coef_a, coef_b, coef_c, dweight, dblend_c, n, c, l, n_split,
                TRAINING=training, HAS_WEIGHT=weight is not None, BLOCK_N=block_n, BLOCK_C=block_cn,
                num_warps=fwarps if _utils.INTERPRET else 8,  # 255 registers and spills at 4 warps, 128 at 8
            )
        dx = apply_affine(dyv, coef_a, channels_last, c=coef_c, v=xv, b=coef_b, m=mu_in, like=x)
        dblend = dblend_c.sum().reshape(1)
    return dx, dweight, dbias, dgate_c.sum().reshape(1), dblend


# ---------------------------------------------------------------------------------------------
# torch.library ops and autograd
# ---------------------------------------------------------------------------------------------


@define_op("timm_reid::blend_forward")
def blend_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Tensor,
    blend: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    base: str,
    training: bool,
    update_running: bool,
    momentum: float,
    eps: float,
    mix_std: bool,
    channels_last: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, mu_in, var_in, mu_b, var_b, mean, rstd, base_mean, base_rstd, new_running_mean,
    new_running_var)``: AIBN's statistics as :func:`._segment_norm.segmented_forward`; the base's
    are (N, L) per position (LayerNorm) or (C,) (BatchNorm); new running stats (1, C) or empty."""
    return _blend_forward_impl(x, weight, bias, gate, blend, running_mean, running_var, base, training,
                               update_running, momentum, eps, mix_std, channels_last)


@define_op("timm_reid::blend_backward")
def _blend_backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    gate: Tensor,
    blend: Tensor,
    mu_in: Tensor,
    var_in: Tensor,
    mu_b: Tensor,
    var_b: Tensor,
    mean: Tensor,
    rstd: Tensor,
    base_mean: Tensor,
    base_rstd: Tensor,
    base: str,
    training: bool,
    mix_std: bool,
    channels_last: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias, dgate, dblend)``; the last four fp32, dgate before the clamp mask,
    dblend the derivative w.r.t. ``b`` (straight-through: also w.r.t. the raw blend)."""
    return _blend_backward_impl(dy, x, weight, gate, blend, mu_in, var_in, mu_b, var_b, mean, rstd, base_mean,
                                base_rstd, base, training, mix_std, channels_last)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, gate, blend, _rm, _rv, base, training, _upd, _m, _eps, mix_std, channels_last = inputs
    _y, mu_in, var_in, mu_b, var_b, mean, rstd, base_mean, base_rstd, _nrm, _nrv = output
    ctx.save_for_backward(x, weight, gate, blend, mu_in, var_in, mu_b, var_b, mean, rstd, base_mean, base_rstd)
    ctx.config = (base, training, mix_std, channels_last)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy, *unused):
    x, weight, gate, blend, mu_in, var_in, mu_b, var_b, mean, rstd, base_mean, base_rstd = ctx.saved_tensors
    dx, dweight, dbias, dgate, dblend = _blend_backward(
        dy, x, weight, gate, blend, mu_in, var_in, mu_b, var_b, mean, rstd, base_mean, base_rstd, *ctx.config)
    d_w = None if weight is None else dweight.to(weight.dtype)
    d_b = None if ctx.bias_dtype is None else dbias.to(ctx.bias_dtype)
    return (dx, d_w, d_b, gate_grad(gate, dgate), dblend.to(blend.dtype).reshape(blend.shape),
            None, None, None, None, None, None, None, None, None)


blend_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------------


def blend(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gate: Tensor,
    blend: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    *,
    base: str,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    mix: str = "var",
    channels_last: bool = False,
) -> Tensor:
    """``y = (1 - b) * base(x) + b * AIBN(x)`` with the Triton kernels, one read of x per pass
    (``timm_reid.layers.BlendedAIBN``'s forward; the composition is ``tests/layers/test_blend.py``).

    * ``x``: ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``channels_last=True``; any strides (NCHW
      and channels-last memory read in place); fp32 / fp16 / bf16; statistics in fp32; ``y`` has
      ``x``'s dtype and layout.
    * ``base``: ``"layernorm"`` (over C at each position, as timm ``LayerNorm`` / ``LayerNorm2d``)
      or ``"batchnorm"`` (``F.batch_norm``: batch statistics in training, the running ones in eval).
    * ``weight``, ``bias``: ``(C,)`` or None, shared by both branches. ``gate``: raw ``(1,)``, AIBN's
      ``w = clamp(gate, 0, 1)`` (zero gradient outside ``[0, 1]``). ``blend``: raw ``(1,)``,
      ``b = clamp(blend, 0, 1)`` in value with the identity's gradient (straight-through).
    * ``running_mean``, ``running_var``: ``(C,)`` or None; AIBN's buffers, updated in place in
      training by AIBN's rule (``r <- (1 - momentum) r + momentum * stat``); in eval (required) they
      are AIBN's batch side and, for a BatchNorm base, BatchNorm's statistics.
    * ``mix``: ``"var"`` or ``"std"``. Differentiable w.r.t. x, weight, bias, gate, blend
      (ops ``timm_reid::blend_forward/backward``).
    * A LayerNorm base with C > :data:`MAX_LAYERNORM_C` runs the composition (AIBN kernels,
      ``F.layer_norm``, ``lerp``). No ``process_group``: the distributed case is not fused.
    """
    _utils.check_activation(x, channels_last, "blend")
    check_mix(mix, "blend")
    if base not in BASES:
        raise ValueError(f"blend: base must be one of {BASES}, got {base!r}")
    c = x.shape[3] if channels_last else x.shape[1]
    l = x.shape[1] * x.shape[2] if channels_last else x.shape[2] * x.shape[3]
    if l < 2:
        raise ValueError(f"blend: instance statistics need H*W >= 2, got shape {tuple(x.shape)}")
    for name, t in (("gate", gate), ("blend", blend)):
        if not isinstance(t, Tensor) or t.numel() != 1:
            raise ValueError(f"blend: {name} must be a tensor of one element (the raw parameter), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise ValueError(f"blend: {name} must have C = {c} elements, got shape {tuple(t.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("blend: eval mode needs running_mean and running_var")
    _utils.check_running(running_mean, 1, c, "running_mean", "blend")
    _utils.check_running(running_var, 1, c, "running_var", "blend")
    if base == "layernorm" and triton.next_power_of_2(c) > MAX_LAYERNORM_C:
        return _composed_layernorm(x, weight, bias, gate, blend, running_mean, running_var, training=training,
                                   momentum=momentum, eps=eps, mix=mix, channels_last=channels_last)
    update = training and running_mean is not None and running_var is not None
    outs = blend_forward(x, weight, bias, gate.reshape(1), blend.reshape(1), running_mean, running_var, base,
                         training, update, float(momentum), float(eps), mix == "std", channels_last)
    if update:
        with torch.no_grad():
            running_mean.copy_(outs[9].view_as(running_mean))
            running_var.copy_(outs[10].view_as(running_var))
    return outs[0]


def _composed_layernorm(x, weight, bias, gate, blend, running_mean, running_var, *, training, momentum, eps, mix,
                        channels_last):
    """The fallback for a LayerNorm base wider than one tile: AIBN's kernels, ``F.layer_norm`` and ``lerp``."""
    from ._aibn import aibn

    adaptive = aibn(x, weight, bias, gate, running_mean, running_var, training=training, momentum=momentum, eps=eps,
                    mix=mix, channels_last=channels_last)
    c = x.shape[3] if channels_last else x.shape[1]
    if channels_last:
        base = F.layer_norm(x, (c,), weight, bias, eps)
    else:
        base = F.layer_norm(x.permute(0, 2, 3, 1), (c,), weight, bias, eps).permute(0, 3, 1, 2)
    b = blend + (blend.clamp(0.0, 1.0) - blend).detach()
    return torch.lerp(base, adaptive, b.to(base.dtype).reshape(()))
