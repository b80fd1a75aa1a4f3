"""The per-channel affine pass ``out = u * a + (v - m) * b + c`` that ends every normalization
launch sequence (forward ``y = x * a + b``, AIBN backward ``dx = dy * A + (x - mu_in) * B + C0``,
TNorm conversion backward ``dx = dy * scale``). Reads its inputs once, writes once."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._utils import ncl_view, prune_tile_configs, should_launch, tile_configs


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
