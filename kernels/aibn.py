"""AIBN forward and backward in Triton, and the segmented normalization core TNorm reuses.

The op contract is documented on :func:`aibn`; the math is DESIGN.md 3.1 and the reference is
``timm_reid.layers.functional.aibn`` (tests compare against it; this file never imports it).

Generalisation used by both layers: the batch is split into *segments* of samples (AIBN: one
segment, the whole batch; TNorm ``mode="normalize"``: one segment per camera). Each segment has its
own batch statistics (training) or its own row of the running tables (eval).

Launch sequence, forward (x read twice, y written once, like a training BatchNorm):

1. ``_instance_stats_kernel``  grid (N, C-blocks, L-splits): Welford/Chan per (n, c, split) in fp32.
2. ``_finalize_kernel``        grid (C-blocks,): combines splits (Chan) into instance stats, segment
   batch stats (Chan over samples), new running stats, gate mix, and per-(n, c) ``a, b``.
3. ``_apply_kernel``           grid (L-blocks, N, C-blocks): ``y = x * a + b``.

Backward (x and dy read twice each, dx written once):

1. ``_bwd_reduce_kernel``      grid (N, C-blocks, L-splits): partial ``sum dy``, ``sum dy * xhat``.
2. ``_bwd_finalize_kernel``    grid (C-blocks,): dweight, dbias, per-channel dgate partials, and the
   per-(n, c) coefficients of ``dx = A * dy + B * (x - mu_in) + C0``.
3. ``_apply_kernel``           ``dx = dy * A + (x - mu_in) * B + C0``.

Every reduction is two-stage with fp32 partials reduced in a fixed order: no float atomics, two
runs are bitwise equal. With a process group the finalize kernels run in two phases around an
all-reduce of the (S, C) segment sums (:mod:`._distributed`).

Per-element traffic: forward 2 reads of x + 1 write of y; backward 2 reads of x, 2 of dy, 1 write
of dx; everything else is O(N * C) fp32 (statistics, coefficients, partials of the L-splits).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from . import _utils
from ._utils import define_op, finalize_blocks, ncl_view, prune_tile_configs, should_launch, split_plan, tile_configs

__all__ = ["aibn"]

MIX_MODES = ("var", "std")


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "chunk", "stride_xc"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _instance_stats_kernel(
    x_ptr,  # (N, C, L) activation via strides; fp32 / fp16 / bf16
    pmean_ptr,  # out (n_split, N, C) fp32: mean of each L-chunk
    pm2_ptr,  # out (n_split, N, C) fp32: sum of squared deviations from that chunk mean
    N,  # batch size
    C,  # channels
    L,  # spatial positions H * W
    chunk,  # L positions per split (the last split may be shorter)
    stride_xn, stride_xc, stride_xl,  # strides of x in elements
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    pid_c = tl.program_id(1)
    split = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    l_begin = split * chunk
    l_end = tl.minimum(l_begin + chunk, L)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(l_begin, l_end, BLOCK_L):
        rows = start + tl.arange(0, BLOCK_L)
        mask = (rows < l_end)[:, None] & cmask[None, :]
        xt = tl.load(x_base + rows[:, None] * stride_xl + cols[None, :] * stride_xc, mask=mask, other=0.0)
        xt = xt.to(tl.float32)
        # Chan: combine the running (count_a, mean, m2) with this tile's exact (count_b, mean, m2).
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


@triton.jit
def _finalize_kernel(
    pmean_ptr, pm2_ptr,  # (n_split, N, C) fp32 chunk statistics (NEED_INSTANCE)
    seg_ptr,  # (N,) int64: segment of each sample = row of the segment and running tables
    tgt_ptr,  # (N,) int64: target camera of each sample (CONVERT)
    gate_ptr,  # (1,) raw gate, any float dtype (HAS_GATE; w = clamp(gate, 0, 1) weights the batch side)
    weight_ptr, bias_ptr,  # (C,) affine parameters (HAS_WEIGHT / HAS_BIAS)
    rm_ptr, rv_ptr,  # (R, C) running mean / var, contiguous, read (running update, convert targets)
    src_m_ptr, src_v_ptr,  # (R, C) batch-side tables of the eval path (running stats, or all-reduced
    # segment stats in the distributed path); usually the same tensors as rm/rv
    rm_out_ptr, rv_out_ptr,  # (S, C) out: updated running stats (UPDATE_RUNNING); may alias rm/rv
    mu_in_ptr, var_in_ptr,  # (N, C) fp32 out: instance mean, unbiased instance var (NEED_INSTANCE)
    seg_mean_ptr, seg_var_ptr,  # (S, C) fp32 out: batch stats of each segment (TRAINING)
    mu_b_ptr, var_b_ptr,  # (N, C) fp32 out: batch-side stats used by each sample
    a_ptr, b_ptr,  # (N, C) fp32 out: per-(n, c) scale and shift of the output (y = x * a + b)
    mean_ptr, rstd_ptr,  # (N, C) fp32 out: mixed mean and 1 / sqrt(var + eps) (saved for backward)
    N, C, L, S,  # batch, channels, spatial positions, segments
    n_split, chunk,  # layout of the partial statistics
    momentum, eps,  # float scalars (cast to fp32 here: Inductor passes fp64)
    TRAINING: tl.constexpr,  # batch-side stats from the batch (else from running rows)
    NEED_INSTANCE: tl.constexpr,  # instance stats needed (else only running rows are used)
    HAS_GATE: tl.constexpr,  # gate mix (else w = 1: pure segment/running normalization)
    MIX_STD: tl.constexpr,  # mix standard deviations instead of variances
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    UPDATE_RUNNING: tl.constexpr,  # write (1 - m) * running + m * segment stats to rm_out/rv_out
    CONVERT: tl.constexpr,  # TNorm conversion: a, b map source stats to target running stats
    WRITE_COEF: tl.constexpr,  # compute a, b (False: statistics / running update only)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    eps = tl.cast(eps, tl.float32)
    momentum = tl.cast(momentum, tl.float32)
    chunk_f = tl.cast(chunk, tl.float32)

    # Pass A: instance statistics, Chan combination of the L-splits in a fixed order.
    if NEED_INSTANCE:
        for n0 in range(0, N, BLOCK_N):
            ns = n0 + tl.arange(0, BLOCK_N)
            mask = (ns < N)[:, None] & cmask[None, :]
            off = ns[:, None].to(tl.int64) * C + cols[None, :]
            mean = tl.load(pmean_ptr + off, mask=mask, other=0.0)
            m2 = tl.load(pm2_ptr + off, mask=mask, other=0.0)
            for s in range(1, n_split):
                count_a = s * chunk_f
                count_b = tl.cast(tl.minimum(chunk, L - s * chunk), tl.float32)
                total = count_a + count_b
                p_off = off + tl.cast(s, tl.int64) * N * C
                mean_b = tl.load(pmean_ptr + p_off, mask=mask, other=0.0)
                m2_b = tl.load(pm2_ptr + p_off, mask=mask, other=0.0)
                delta = mean_b - mean
                mean = mean + delta * (count_b / total)
                m2 = m2 + m2_b + delta * delta * (count_a * count_b / total)
            tl.store(mu_in_ptr + off, mean, mask=mask)
            tl.store(var_in_ptr + off, m2 / tl.cast(L - 1, tl.float32), mask=mask)
        tl.debug_barrier()

    # Pass B: batch statistics of each segment (Chan over the instance means of its samples):
    # mu_s = mean(mu_in), var_s = mean(var_in) + mean((mu_in - mu_s)^2).
    if TRAINING:
        for d in range(0, S):
            count = tl.zeros([BLOCK_C], dtype=tl.float32)
            mean = tl.zeros([BLOCK_C], dtype=tl.float32)
            m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
            var_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                ns = n0 + tl.arange(0, BLOCK_N)
                seg = tl.load(seg_ptr + ns, mask=ns < N, other=-1)
                member = (seg == d) & (ns < N)
                mask = member[:, None] & cmask[None, :]
                off = ns[:, None].to(tl.int64) * C + cols[None, :]
                mu = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
                var = tl.load(var_in_ptr + off, mask=mask, other=0.0)
                count_b = tl.sum(member.to(tl.float32), axis=0)
                tile_mean = tl.sum(mu, axis=0) / tl.maximum(count_b, 1.0)
                dev = tl.where(mask, mu - tile_mean[None, :], 0.0)
                tile_m2 = tl.sum(dev * dev, axis=0)
                total = count + count_b
                delta = tile_mean - mean
                mean = mean + delta * (count_b / tl.maximum(total, 1.0))
                m2 = m2 + tile_m2 + delta * delta * (count * count_b / tl.maximum(total, 1.0))
                var_sum += tl.sum(var, axis=0)
                count = total
            seg_var = (var_sum + m2) / tl.maximum(count, 1.0)
            tl.store(seg_mean_ptr + d * C + cols, mean, mask=cmask)
            tl.store(seg_var_ptr + d * C + cols, seg_var, mask=cmask)
            if UPDATE_RUNNING:
                old_m = tl.load(rm_ptr + d * C + cols, mask=cmask, other=0.0).to(tl.float32)
                old_v = tl.load(rv_ptr + d * C + cols, mask=cmask, other=0.0).to(tl.float32)
                present = count > 0
                new_m = tl.where(present, old_m + momentum * (mean - old_m), old_m)
                new_v = tl.where(present, old_v + momentum * (seg_var - old_v), old_v)
                tl.store(rm_out_ptr + d * C + cols, new_m.to(rm_out_ptr.dtype.element_ty), mask=cmask)
                tl.store(rv_out_ptr + d * C + cols, new_v.to(rv_out_ptr.dtype.element_ty), mask=cmask)
        tl.debug_barrier()

    # Pass C: per-sample batch-side stats, mix, and the output's scale and shift.
    if WRITE_COEF:
        if HAS_GATE:
            w = tl.load(gate_ptr).to(tl.float32)
            w = tl.minimum(tl.maximum(w, 0.0), 1.0)
        if HAS_WEIGHT:
            gamma = tl.load(weight_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
        else:
            gamma = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
        if HAS_BIAS:
            beta = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        else:
            beta = tl.zeros([BLOCK_C], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            ns = n0 + tl.arange(0, BLOCK_N)
            nmask = ns < N
            mask = nmask[:, None] & cmask[None, :]
            off = ns[:, None].to(tl.int64) * C + cols[None, :]
            row = tl.load(seg_ptr + ns, mask=nmask, other=0)
            row_off = row[:, None] * C + cols[None, :]
            if TRAINING:
                mu_b = tl.load(seg_mean_ptr + row_off, mask=mask, other=0.0)
                var_b = tl.load(seg_var_ptr + row_off, mask=mask, other=1.0)
            else:
                mu_b = tl.load(src_m_ptr + row_off, mask=mask, other=0.0).to(tl.float32)
                var_b = tl.load(src_v_ptr + row_off, mask=mask, other=1.0).to(tl.float32)
            if CONVERT:
                # x' = (x - mu_src) / sqrt(var_src + eps) * sqrt(var_t + eps) + mu_t, targets read
                # from the running stats as they were before this forward (rm/rv are not written).
                t = tl.load(tgt_ptr + ns, mask=nmask, other=0)
                t_off = t[:, None] * C + cols[None, :]
                mu_t = tl.load(rm_ptr + t_off, mask=mask, other=0.0).to(tl.float32)
                var_t = tl.load(rv_ptr + t_off, mask=mask, other=1.0).to(tl.float32)
                a = tl.sqrt(var_t + eps) / tl.sqrt(var_b + eps)
                b = mu_t - mu_b * a
            else:
                if HAS_GATE:
                    mu_in = tl.load(mu_in_ptr + off, mask=mask, other=0.0)
                    var_in = tl.load(var_in_ptr + off, mask=mask, other=1.0)
                    mean = (1.0 - w) * mu_in + w * mu_b
                    if MIX_STD:
                        sigma = (1.0 - w) * tl.sqrt(var_in) + w * tl.sqrt(var_b)
                        var = sigma * sigma
                    else:
                        var = (1.0 - w) * var_in + w * var_b
                else:
                    mean = mu_b
                    var = var_b
                rstd = 1.0 / tl.sqrt(var + eps)
                a = gamma[None, :] * rstd
                b = beta[None, :] - mean * a
                tl.store(mean_ptr + off, mean, mask=mask)
                tl.store(rstd_ptr + off, rstd, mask=mask)
                tl.store(mu_b_ptr + off, mu_b, mask=mask)
                tl.store(var_b_ptr + off, var_b, mask=mask)
            tl.store(a_ptr + off, a, mask=mask)
            tl.store(b_ptr + off, b, mask=mask)


@triton.autotune(
    configs=tile_configs(),
    key=["C", "L", "stride_uc", "stride_oc", "HAS_V", "HAS_C"],
    prune_configs_by={"early_config_prune": prune_tile_configs},
)
@triton.jit
def _apply_kernel(
    u_ptr,  # (N, C, L) via strides: input of the per-channel affine map (x, or dy in backward)
    v_ptr,  # (N, C, L) via strides: optional second input (x in the AIBN backward; HAS_V)
    a_ptr,  # (N, C) fp32: coefficient of u
    b_ptr,  # (N, C) fp32: coefficient of (v - m) (HAS_V)
    m_ptr,  # (N, C) fp32: centre of v (HAS_V; the instance mean: no cancellation in b * v - b * m)
    c_ptr,  # (N, C) fp32: constant term (HAS_C)
    out_ptr,  # (N, C, L) via strides: out = u * a + (v - m) * b + c, in out's dtype
    N, C, L,
    stride_un, stride_uc, stride_ul,
    stride_vn, stride_vc, stride_vl,
    stride_on, stride_oc, stride_ol,
    HAS_V: tl.constexpr,
    HAS_C: tl.constexpr,
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
    coef = n.to(tl.int64) * C + cols
    n64 = n.to(tl.int64)
    u = tl.load(u_ptr + n64 * stride_un + rows[:, None] * stride_ul + cols[None, :] * stride_uc, mask=mask, other=0.0)
    a = tl.load(a_ptr + coef, mask=cmask, other=0.0)
    out = u.to(tl.float32) * a[None, :]
    if HAS_V:
        v = tl.load(v_ptr + n64 * stride_vn + rows[:, None] * stride_vl + cols[None, :] * stride_vc, mask=mask, other=0.0)
        b = tl.load(b_ptr + coef, mask=cmask, other=0.0)
        m = tl.load(m_ptr + coef, mask=cmask, other=0.0)
        out += (v.to(tl.float32) - m[None, :]) * b[None, :]
    if HAS_C:
        c = tl.load(c_ptr + coef, mask=cmask, other=0.0)
        out += c[None, :]
    o_ptrs = out_ptr + n64 * stride_on + rows[:, None] * stride_ol + cols[None, :] * stride_oc
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


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
    dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_C], dtype=tl.float32)
    dgate = tl.zeros([BLOCK_C], dtype=tl.float32)

    # Pass A: dL/dmean and dL/dvar of each (n, c), parameter gradients, gate gradient.
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
    tl.debug_barrier()

    # Pass B: gradients reaching each segment's batch statistics, divided by the segment size.
    if TRAINING and SEG_MODE != 2:
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
        tl.debug_barrier()

    # Pass C: chain to the instance statistics and fold into dx = A * dy + B * (x - mu_in) + C0.
    if SEG_MODE != 1:
        _bwd_coefficients(
            seg_ptr, g_mu_ptr, g_var_ptr, mu_in_ptr, var_in_ptr, mu_b_ptr, var_b_ptr, rstd_ptr,
            seg_gmu_ptr, seg_gvar_ptr, coef_a_ptr, coef_b_ptr, coef_c_ptr, gamma, w, cols, cmask, N, C, L,
            TRAINING, NEED_INSTANCE, MIX_STD, BLOCK_N, BLOCK_C,
        )


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


def _instance_partials(x: Tensor, channels_last: bool) -> Tuple[Tensor, Tensor, int, int]:
    """Launch stage 1 of the statistics: ``(pmean, pm2, n_split, chunk)``."""
    x, n, c, l, (sxn, sxc, sxl) = ncl_view(x, channels_last)
    n_split, chunk = split_plan(n, c, l, x.device)
    pmean = x.new_empty((n_split, n, c), dtype=torch.float32)
    pm2 = x.new_empty((n_split, n, c), dtype=torch.float32)
    if should_launch(x):
        grid = lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]), n_split)  # noqa: E731
        wrap_triton(_instance_stats_kernel)[grid](x, pmean, pm2, n, c, l, chunk, sxn, sxc, sxl)
    return pmean, pm2, n_split, chunk


def apply_affine(
    u: Tensor,
    a: Tensor,
    channels_last: bool,
    c: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    m: Optional[Tensor] = None,
    like: Optional[Tensor] = None,
) -> Tensor:
    """``out = u * a + (v - m) * b + c`` with (N, C) fp32 coefficients; out has the layout of
    ``like`` (default ``u``) and its dtype."""
    like = u if like is None else like
    out = torch.empty_like(like)
    u_, n, ch, l, su = ncl_view(u, channels_last)
    _, _, _, _, so = ncl_view(out, channels_last)
    if v is not None:
        v, _, _, _, sv = ncl_view(v, channels_last)
    else:
        sv = (0, 0, 0)
    if should_launch(u_, a):
        grid = lambda meta: (triton.cdiv(l, meta["BLOCK_L"]), n, triton.cdiv(ch, meta["BLOCK_C"]))  # noqa: E731
        wrap_triton(_apply_kernel)[grid](
            u_, u_ if v is None else v, a, a if b is None else b, a if m is None else m, a if c is None else c, out,
            n, ch, l, *su, *sv, *so, HAS_V=v is not None, HAS_C=c is not None,
        )
    return out


def local_segment_stats(
    x: Tensor, segments: Tensor, num_segments: int, channels_last: bool
) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor, int, int]]:
    """Batch statistics of each segment of this process's samples: ``(seg_mean, seg_var, partials)``
    with ``(S, C)`` fp32 statistics (empty segments: 0) and the stage-1 partials for reuse."""
    xv, n, c, l, _ = ncl_view(x, channels_last)
    partials = _instance_partials(xv, channels_last)
    pmean, pm2, n_split, chunk = partials
    f32 = dict(dtype=torch.float32, device=x.device)
    mu_in, var_in = torch.empty((n, c), **f32), torch.empty((n, c), **f32)
    seg_mean = torch.empty((num_segments, c), **f32)
    seg_var = torch.empty((num_segments, c), **f32)
    block_n, block_c, warps = finalize_blocks(n)
    d = mu_in
    if should_launch(xv):
        wrap_triton(_finalize_kernel)[(triton.cdiv(c, block_c),)](
            pmean, pm2, segments, segments, d, d, d, d, d, d, d, d, d,
            mu_in, var_in, seg_mean, seg_var, d, d, d, d, d, d,
            n, c, l, num_segments, n_split, chunk, 0.0, 0.0,
            TRAINING=True, NEED_INSTANCE=True, HAS_GATE=False, MIX_STD=False, HAS_WEIGHT=False,
            HAS_BIAS=False, UPDATE_RUNNING=False, CONVERT=False, WRITE_COEF=False,
            BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps,
        )
    return seg_mean, seg_var, partials


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
    f32 = dict(dtype=torch.float32, device=x.device)
    if partials is not None:
        pmean, pm2, n_split, chunk = partials
    elif need_instance:
        pmean, pm2, n_split, chunk = _instance_partials(xv, channels_last)
    else:
        pmean = pm2 = torch.empty((0,), **f32)
        n_split, chunk = 1, l
    nc = (n, c)
    mu_in, var_in, mu_b, var_b, a, b, mean, rstd = (torch.empty(nc, **f32) for _ in range(8))
    seg_shape = (num_segments, c) if training else (0,)
    seg_mean, seg_var = torch.empty(seg_shape, **f32), torch.empty(seg_shape, **f32)
    if update_running:
        new_rm = torch.empty((num_segments, c), dtype=running_mean.dtype, device=x.device)
        new_rv = torch.empty((num_segments, c), dtype=running_var.dtype, device=x.device)
    else:
        new_rm = torch.empty((0,), dtype=x.dtype, device=x.device)
        new_rv = torch.empty((0,), dtype=x.dtype, device=x.device)
    dummy = mu_in
    block_n, block_c, warps = finalize_blocks(n)
    if should_launch(x):
        wrap_triton(_finalize_kernel)[(triton.cdiv(c, block_c),)](
            pmean, pm2, segments, segments,
            dummy if gate is None else gate,
            dummy if weight is None else weight,
            dummy if bias is None else bias,
            dummy if running_mean is None else running_mean,
            dummy if running_var is None else running_var,
            dummy if running_mean is None else running_mean,
            dummy if running_var is None else running_var,
            new_rm if update_running else dummy, new_rv if update_running else dummy,
            mu_in, var_in, seg_mean if training else dummy, seg_var if training else dummy,
            mu_b, var_b, a, b, mean, rstd,
            n, c, l, num_segments, n_split, chunk, momentum, eps,
            TRAINING=training, NEED_INSTANCE=need_instance, HAS_GATE=gate is not None, MIX_STD=mix_std,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, UPDATE_RUNNING=update_running,
            CONVERT=False, WRITE_COEF=True, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps,
        )
    y = apply_affine(xv, a, channels_last, c=b, like=x)
    return y, mu_in, var_in, mu_b, var_b, mean, rstd, new_rm, new_rv


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
def _segment_norm_forward(
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


_segment_norm_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public entry
# ---------------------------------------------------------------------------------------------


def check_running(running: Optional[Tensor], rows: int, c: int, name: str, op: str) -> None:
    if running is None:
        return
    if running.numel() != rows * c or not running.is_contiguous():
        raise ValueError(
            f"{op}: {name} must be a contiguous tensor of {rows * c} elements ({rows} x {c}), "
            f"got shape {tuple(running.shape)} with strides {running.stride()}"
        )


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
    ``timm_reid.layers.functional.aibn``, DESIGN.md 3.1).

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
    if mix not in MIX_MODES:
        raise ValueError(f"aibn: mix must be one of {MIX_MODES}, got {mix!r}")
    c = x.shape[3] if channels_last else x.shape[1]
    l = x.shape[1] * x.shape[2] if channels_last else x.shape[2] * x.shape[3]
    if l < 2:
        raise ValueError(f"aibn: instance statistics need H*W >= 2, got shape {tuple(x.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("aibn: eval mode needs running_mean and running_var")
    check_running(running_mean, 1, c, "running_mean", "aibn")
    check_running(running_var, 1, c, "running_var", "aibn")
    update = training and running_mean is not None and running_var is not None
    segments = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    if training and process_group is not None:
        from ._distributed import distributed_segment_norm

        return distributed_segment_norm(
            x, weight, bias, gate, running_mean, running_var, segments, 1,
            momentum=float(momentum), eps=float(eps), mix_std=mix == "std", channels_last=channels_last,
            group=process_group,
        )
    outs = _segment_norm_forward(
        x, weight, bias, gate, running_mean, running_var, segments, 1,
        training, update, float(momentum), float(eps), mix == "std", channels_last,
    )
    if update:
        with torch.no_grad():
            running_mean.copy_(outs[7].view_as(running_mean))
            running_var.copy_(outs[8].view_as(running_var))
    return outs[0]
