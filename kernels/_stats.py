"""Forward statistics of the segmented normalization that AIBN and TNorm share.

The batch is split into *segments* of samples (AIBN: one segment, the whole batch; TNorm: one
segment per camera). Each segment has its own batch statistics (training) or its own row of the
running tables (eval). Two launches (docs/DESIGN.md section 6):

1. ``_instance_stats_kernel``  grid (N, C-blocks, L-splits): Welford/Chan per (n, c, split) in fp32.
2. ``_finalize_kernel``        grid (C-blocks,): combines splits (Chan) into instance stats, segment
   batch stats (Chan over samples), new running stats, gate mix, and per-(n, c) ``a, b`` of the
   output ``y = x * a + b`` (applied by :mod:`._apply`). One fused launch: every pass needs the
   previous one's results for all samples of a channel block, which a single program holds.

Every reduction is two-stage with fp32 partials reduced in a fixed order: no float atomics, two
runs are bitwise equal.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._utils import finalize_blocks, ncl_view, prune_tile_configs, should_launch, split_plan, tile_configs


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
        _combine_splits(pmean_ptr, pm2_ptr, mu_in_ptr, var_in_ptr, cols, cmask, N, C, L, n_split, chunk, chunk_f,
                        BLOCK_N)
        tl.debug_barrier()
    # Pass B: batch statistics of each segment and the running-row update.
    if TRAINING:
        _segment_batch_stats(seg_ptr, mu_in_ptr, var_in_ptr, rm_ptr, rv_ptr, rm_out_ptr, rv_out_ptr, seg_mean_ptr,
                             seg_var_ptr, cols, cmask, N, C, S, momentum, UPDATE_RUNNING, BLOCK_N, BLOCK_C)
        tl.debug_barrier()
    # Pass C: per-sample batch-side stats, mix, and the output's scale and shift.
    if WRITE_COEF:
        _output_coefficients(
            seg_ptr, tgt_ptr, gate_ptr, weight_ptr, bias_ptr, rm_ptr, rv_ptr, src_m_ptr, src_v_ptr, mu_in_ptr,
            var_in_ptr, seg_mean_ptr, seg_var_ptr, mu_b_ptr, var_b_ptr, a_ptr, b_ptr, mean_ptr, rstd_ptr,
            cols, cmask, N, C, eps, TRAINING, HAS_GATE, MIX_STD, HAS_WEIGHT, HAS_BIAS, CONVERT, BLOCK_N, BLOCK_C,
        )


@triton.jit
def _combine_splits(pmean_ptr, pm2_ptr, mu_in_ptr, var_in_ptr, cols, cmask, N, C, L, n_split, chunk, chunk_f,
                    BLOCK_N: tl.constexpr):
    """Pass A of :func:`_finalize_kernel` (arguments as there): instance mean and unbiased variance."""
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


@triton.jit
def _segment_batch_stats(seg_ptr, mu_in_ptr, var_in_ptr, rm_ptr, rv_ptr, rm_out_ptr, rv_out_ptr, seg_mean_ptr,
                         seg_var_ptr, cols, cmask, N, C, S, momentum, UPDATE_RUNNING: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pass B of :func:`_finalize_kernel`: batch statistics of each segment by Chan over the instance
    means of its samples, ``mu_s = mean(mu_in)``, ``var_s = mean(var_in) + mean((mu_in - mu_s)^2)``,
    and (``UPDATE_RUNNING``) the running rows of the segments that have samples."""
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


@triton.jit
def _output_coefficients(
    seg_ptr, tgt_ptr, gate_ptr, weight_ptr, bias_ptr, rm_ptr, rv_ptr, src_m_ptr, src_v_ptr, mu_in_ptr,
    var_in_ptr, seg_mean_ptr, seg_var_ptr, mu_b_ptr, var_b_ptr, a_ptr, b_ptr, mean_ptr, rstd_ptr,
    cols, cmask, N, C, eps, TRAINING: tl.constexpr, HAS_GATE: tl.constexpr, MIX_STD: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, CONVERT: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass C of :func:`_finalize_kernel`: per-sample batch-side statistics, the gate mix, and the
    per-(n, c) scale ``a`` and shift ``b`` of the output (``CONVERT``: the map from the source
    statistics to the target camera's running statistics)."""
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


# ---------------------------------------------------------------------------------------------
# Launchers (plain functions of real or fake tensors; called inside the torch.library ops)
# ---------------------------------------------------------------------------------------------


def instance_partials(x: Tensor, channels_last: bool) -> Tuple[Tensor, Tensor, int, int]:
    """Launch stage 1 of the statistics: ``(pmean, pm2, n_split, chunk)``."""
    x, n, c, l, (sxn, sxc, sxl) = ncl_view(x, channels_last)
    n_split, chunk = split_plan(n, c, l, x.device)
    pmean = x.new_empty((n_split, n, c), dtype=torch.float32)
    pm2 = x.new_empty((n_split, n, c), dtype=torch.float32)
    if should_launch(x):
        grid = lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]), n_split)  # noqa: E731
        wrap_triton(_instance_stats_kernel)[grid](x, pmean, pm2, n, c, l, chunk, sxn, sxc, sxl)
    return pmean, pm2, n_split, chunk


class Finalized(NamedTuple):
    """Outputs of one :func:`finalize` launch; tensors not computed by that launch are empty."""

    mu_in: Tensor  # (N, C) fp32 instance mean
    var_in: Tensor  # (N, C) fp32 unbiased instance variance
    seg_mean: Tensor  # (S, C) fp32 batch statistics of each segment (training)
    seg_var: Tensor
    new_rm: Tensor  # (S, C) updated running statistics (update_running), running dtype
    new_rv: Tensor
    mu_b: Tensor  # (N, C) fp32 batch-side statistics used by each sample (write_coef, no convert)
    var_b: Tensor
    a: Tensor  # (N, C) fp32 output scale and shift: y = x * a + b (write_coef)
    b: Tensor
    mean: Tensor  # (N, C) fp32 mixed mean and 1 / sqrt(var + eps) (write_coef, no convert)
    rstd: Tensor


def finalize(
    partials: Tuple[Tensor, Tensor, int, int],
    segments: Tensor,
    num_segments: int,
    shape: Tuple[int, int, int],
    *,
    training: bool,
    need_instance: bool,
    targets: Optional[Tensor] = None,
    gate: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    running: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
    source: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
    mix_std: bool = False,
    update_running: bool = False,
    convert: bool = False,
    write_coef: bool = True,
    momentum: float = 0.0,
    eps: float = 0.0,
) -> Finalized:
    """Launch :func:`_finalize_kernel` (one program per channel block) and return its outputs.

    ``partials`` are those of :func:`instance_partials` (empty when ``need_instance`` is False),
    ``shape`` is ``(N, C, L)``; ``running`` the (R, C) running tables (read for the update and as
    conversion targets), ``source`` the tables of the eval batch side (default: ``running``).
    """
    pmean, pm2, n_split, chunk = partials
    n, c, l = shape
    rm, rv = running
    src_m, src_v = source if source[0] is not None else running
    f32 = dict(dtype=torch.float32, device=segments.device)
    mu_in, var_in = torch.empty((n, c), **f32), torch.empty((n, c), **f32)
    seg = (num_segments, c) if training else (0,)
    coef = (n, c) if write_coef else (0,)
    side = (n, c) if write_coef and not convert else (0,)
    new_shape = (num_segments, c) if update_running else (0,)
    like = rm if rm is not None else mu_in
    out = Finalized(
        mu_in, var_in, torch.empty(seg, **f32), torch.empty(seg, **f32),
        torch.empty(new_shape, dtype=like.dtype, device=like.device),
        torch.empty(new_shape, dtype=like.dtype, device=like.device),
        *(torch.empty(side, **f32) for _ in range(2)), *(torch.empty(coef, **f32) for _ in range(2)),
        *(torch.empty(side, **f32) for _ in range(2)),
    )
    if not should_launch(segments, mu_in):
        return out

    def arg(t: Optional[Tensor]) -> Tensor:
        return mu_in if t is None or t.numel() == 0 else t  # pointer of an argument the variant never reads

    block_n, block_c, warps = finalize_blocks(n)
    wrap_triton(_finalize_kernel)[(triton.cdiv(c, block_c),)](
        pmean, pm2, segments, segments if targets is None else targets, arg(gate), arg(weight), arg(bias),
        arg(rm), arg(rv), arg(src_m), arg(src_v), arg(out.new_rm), arg(out.new_rv),
        mu_in, var_in, arg(out.seg_mean), arg(out.seg_var), arg(out.mu_b), arg(out.var_b), arg(out.a), arg(out.b),
        arg(out.mean), arg(out.rstd),
        n, c, l, num_segments, n_split, chunk, momentum, eps,
        TRAINING=training, NEED_INSTANCE=need_instance, HAS_GATE=gate is not None, MIX_STD=mix_std,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, UPDATE_RUNNING=update_running,
        CONVERT=convert, WRITE_COEF=write_coef, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps,
    )
    return out


def no_partials(l: int, device) -> Tuple[Tensor, Tensor, int, int]:
    """The ``partials`` argument of :func:`finalize` when no instance statistics are needed."""
    empty = torch.empty((0,), dtype=torch.float32, device=device)
    return empty, empty, 1, l


def local_segment_stats(
    x: Tensor, segments: Tensor, num_segments: int, channels_last: bool
) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor, int, int]]:
    """Batch statistics of each segment of this process's samples: ``(seg_mean, seg_var, partials)``
    with ``(S, C)`` fp32 statistics (empty segments: 0) and the stage-1 partials for reuse."""
    xv, n, c, l, _ = ncl_view(x, channels_last)
    partials = instance_partials(xv, channels_last)
    out = finalize(partials, segments, num_segments, (n, c, l), training=True, need_instance=True, write_coef=False)
    return out.seg_mean, out.seg_var, partials
