"""Tiled pairwise cross-camera distance (IICS inter-camera stage) in one Triton kernel.

For ``n`` samples with L2-normalised features ``f`` (n, d), non-negative score vectors ``s`` (n, k)
(the concatenation of every camera head's softmax) and camera ids ``c`` (n,)::

    D[i, j] = 1 - <f_i, f_j> - mu * J(s_i, s_j) * [c_i != c_j]
    J(a, b) = sum_k min(a_k, b_k) / sum_k max(a_k, b_k)            (weighted Jaccard)

The features must already be L2-normalised: the kernel uses the dot product as the cosine and does
not normalise (the IICS pipeline normalises once, after flip-averaging). ``J`` is defined as 0 when
both score vectors are all zero (``0 / 0``).

How it is computed
------------------
One program owns a ``BLOCK x BLOCK`` output tile. It loops over the feature dimension in
``BLOCK_D`` chunks (``tl.dot``, fp32 accumulator) and over the score dimension in ``BLOCK_S``
chunks, accumulating ``sum min`` with a broadcast ``(BLOCK, BLOCK, BLOCK_S)`` minimum and the two
row sums. ``sum max`` is never formed elementwise: ``min(a, b) + max(a, b) = a + b`` gives
``sum max = sum a + sum b - sum min`` (no cancellation: ``sum max >= (sum a + sum b) / 2``), which
halves the inner-loop work; ``mu == 0`` skips the score loop altogether. The matrix is symmetric,
so only tiles on or above the diagonal run; each writes its tile and its transpose. The output is written exactly once, straight into the
single ``(n, n)`` float32 buffer: there is no intermediate ``n x n`` (or ``n x n x k``) tensor.

Numerics: fp32 accumulation for both sums whatever the input dtype; fp32 features are multiplied
in IEEE fp32 (no TF32: the Jaccard term is ~1e-2 and TF32 error on the cosine would be ~1e-3);
``mu`` is cast to fp32 in the kernel (Inductor passes Python floats as fp64). Every output element
is produced by one program with a fixed loop order, so repeated calls with the same tuned
configuration are bitwise identical, and ``D`` is exactly symmetric.

Devices: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` (tests). For plain CPU use the
reference in ``timm_reid.cluster``. Not differentiable (a clustering input): inputs are detached.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["cross_camera_distance", "weighted_jaccard"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Triton picks the CPU interpreter or GPU code when @triton.jit runs (module import): read the flag
# at the same moment.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _define_op(name: str):
    """``torch.library.triton_op`` on GPU builds (torch.compile and export see the kernel). Under
    the interpreter an opaque ``custom_op`` whose fake implementation is the same function, the
    launch being skipped on fake tensors (interpreted kernels cannot run on them)."""

    def register(fn):
        if INTERPRET:
            op = torch.library.custom_op(name, mutates_args=())(fn)
            op.register_fake(fn)
            return op
        return torch.library.triton_op(name, mutates_args=())(fn)

    return register


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type == "meta" or is_fake(t)


def _configs() -> list[triton.Config]:
    if INTERPRET:
        # One config keeps interpreted tests fast; large chunks mean few interpreted loop steps.
        return [triton.Config({"BLOCK": 32, "BLOCK_D": 32, "BLOCK_S": 16, "GROUP": 4}, num_warps=4)]
    # BLOCK_D and BLOCK_S are fixed so the per-element accumulation order does not depend on the
    # tile size the autotuner picks. Two (BLOCK, BLOCK) fp32 accumulators (dot, sum min) plus the
    # (BLOCK, BLOCK, BLOCK_S) minimum live in registers. ptxas -v for sm_90a (triton 3.8):
    # BLOCK=64 at 8 warps uses 253-255 registers, no spills; at 4 warps it spills up to ~800
    # bytes and BLOCK=128 spills ~800 bytes even at 16 warps (neither listed);
    # BLOCK=32 at 4 warps uses 128-144 registers, no spills.
    configs = []
    for block, warps, stages in ((64, 8, 3), (64, 8, 4), (32, 4, 2), (32, 4, 3)):
        configs.append(
            triton.Config(
                {"BLOCK": block, "BLOCK_D": 32, "BLOCK_S": 4, "GROUP": 8},
                num_warps=warps,
                num_stages=stages,
            )
        )
    return configs


@triton.jit
def _dot_tile(
    fa_ptr, fb_ptr, offs_m, offs_n, mask_m, mask_n, d,
    stride_fam, stride_fad, stride_fbn, stride_fbd,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    """``<fa_i, fb_j>`` for the tile's rows and columns, fp32 accumulator, loop over d."""
    dot = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_D):
        offs_k = k0 + tl.arange(0, BLOCK_D)
        mask_k = offs_k < d
        fa = tl.load(
            fa_ptr + offs_m[:, None] * stride_fam + offs_k[None, :] * stride_fad,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        fb = tl.load(
            fb_ptr + offs_n[:, None] * stride_fbn + offs_k[None, :] * stride_fbd,
            mask=mask_n[:, None] & mask_k[None, :],
            other=0.0,
        )
        if DOT_UPCAST:
            fa = fa.to(tl.float32)
            fb = fb.to(tl.float32)
        dot = tl.dot(fa, tl.trans(fb), dot, input_precision=DOT_PRECISION)
    return dot


@triton.jit
def _jaccard_tile(
    sa_ptr, sb_ptr, offs_m, offs_n, mask_m, mask_n, s,
    stride_sam, stride_sas, stride_sbn, stride_sbs,
    BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Weighted Jaccard of the tile's score rows: ``sum min`` by a broadcast minimum over
    ``BLOCK_S`` columns at a time, ``sum max = sum a + sum b - sum min``; 0 where both are 0."""
    sum_min = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    sum_a = tl.zeros((BLOCK,), dtype=tl.float32)
    sum_b = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, s, BLOCK_S):
        offs_k = k0 + tl.arange(0, BLOCK_S)
        mask_k = offs_k < s
        a = tl.load(
            sa_ptr + offs_m[:, None] * stride_sam + offs_k[None, :] * stride_sas,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        ).to(tl.float32)
        b = tl.load(
            sb_ptr + offs_n[:, None] * stride_sbn + offs_k[None, :] * stride_sbs,
            mask=mask_n[:, None] & mask_k[None, :],
            other=0.0,
        ).to(tl.float32)
        sum_min += tl.sum(tl.minimum(a[:, None, :], b[None, :, :]), axis=2)
        sum_a += tl.sum(a, axis=1)
        sum_b += tl.sum(b, axis=1)
    sum_max = sum_a[:, None] + sum_b[None, :] - sum_min
    return tl.where(sum_max > 0.0, sum_min / tl.where(sum_max > 0.0, sum_max, 1.0), 0.0)


@triton.autotune(configs=_configs(), key=["m", "n", "d", "s", "COSINE", "JACCARD", "SYMMETRIC"])
@triton.jit
def _pairwise_kernel(
    fa_ptr,  # (m, d) features of the row samples, fp32/fp16/bf16, L2-normalised (COSINE only)
    fb_ptr,  # (n, d) features of the column samples (same tensor as fa when SYMMETRIC)
    sa_ptr,  # (m, s) non-negative scores of the row samples
    sb_ptr,  # (n, s) non-negative scores of the column samples
    ca_ptr,  # (m,) integer camera ids of the row samples (COSINE only)
    cb_ptr,  # (n,) integer camera ids of the column samples (COSINE only)
    out_ptr,  # (m, n) float32 output, written once per element
    mu,  # scalar weight of the Jaccard term (any float type, used as fp32)
    m,  # number of row samples
    n,  # number of column samples
    d,  # feature dimension
    s,  # score dimension
    stride_fam, stride_fad, stride_fbn, stride_fbd,
    stride_sam, stride_sas, stride_sbn, stride_sbs,
    stride_ca, stride_cb,
    stride_om, stride_on,
    COSINE: tl.constexpr,  # True: 1 - cos - mu * J * [cam differs]; False: J
    JACCARD: tl.constexpr,  # False when mu == 0 (distance only): the score loop is skipped
    SYMMETRIC: tl.constexpr,  # a == b: run tiles with pid_n >= pid_m only and mirror them
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 features
    DOT_UPCAST: tl.constexpr,  # multiply in fp32 (bf16 under the interpreter, whose bf16 dot is wrong)
    BLOCK: tl.constexpr,  # output tile edge (rows and columns)
    BLOCK_D: tl.constexpr,  # feature chunk per dot step
    BLOCK_S: tl.constexpr,  # score chunk per min step
    GROUP: tl.constexpr,  # row tiles per launch group (L2 reuse of column tiles)
):
    # Grouped tile order: consecutive programs cover GROUP row tiles x all column tiles, so the
    # column tiles they stream stay in L2 across the group.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(m, BLOCK)
    tiles_n = tl.cdiv(n, BLOCK)
    per_group = GROUP * tiles_n
    first_m = (pid // per_group) * GROUP
    group_rows = tl.minimum(tiles_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    if SYMMETRIC:
        if pid_n < pid_m:
            return  # the mirrored tile (pid_n, pid_m) writes this one

    offs_m = (pid_m * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    offs_n = (pid_n * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask_m = offs_m < m
    mask_n = offs_n < n

    if COSINE:
        result = 1.0 - _dot_tile(
            fa_ptr, fb_ptr, offs_m, offs_n, mask_m, mask_n, d,
            stride_fam, stride_fad, stride_fbn, stride_fbd,
            BLOCK, BLOCK_D, DOT_PRECISION, DOT_UPCAST,
        )
        if JACCARD:
            jac = _jaccard_tile(
                sa_ptr, sb_ptr, offs_m, offs_n, mask_m, mask_n, s,
                stride_sam, stride_sas, stride_sbn, stride_sbs, BLOCK, BLOCK_S,
            )
            cam_a = tl.load(ca_ptr + offs_m * stride_ca, mask=mask_m, other=0)
            cam_b = tl.load(cb_ptr + offs_n * stride_cb, mask=mask_n, other=0)
            other_camera = cam_a[:, None] != cam_b[None, :]
            mu32 = tl.cast(mu, tl.float32)
            result = result - tl.where(other_camera, mu32 * jac, 0.0)
    else:
        result = _jaccard_tile(
            sa_ptr, sb_ptr, offs_m, offs_n, mask_m, mask_n, s,
            stride_sam, stride_sas, stride_sbn, stride_sbs, BLOCK, BLOCK_S,
        )

    mask = mask_m[:, None] & mask_n[None, :]
    if SYMMETRIC:
        # Upper triangle (incl. the diagonal) from the tile, lower triangle from its transpose, so
        # D is exactly symmetric even where a diagonal tile's dot is not (MMA order). Off-diagonal
        # tiles (pid_n > pid_m) pass both masks whole. The transpose is stored with its own rows
        # along the fast axis, so that write stays coalesced too.
        tl.store(
            out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
            result,
            mask=mask & (offs_m[:, None] <= offs_n[None, :]),
        )
        tl.store(
            out_ptr + offs_n[:, None] * stride_om + offs_m[None, :] * stride_on,
            tl.trans(result),
            mask=mask_n[:, None] & mask_m[None, :] & (offs_n[:, None] > offs_m[None, :]),
        )
    else:
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, result, mask=mask)


# ----------------------------------------------------------------------------- launchers


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(
            f"all tensors must be on one device; {name} is on {t.device}, the first input on "
            f"{device}."
        )


def _check_backend(device: torch.device) -> None:
    if device.type == "cuda":
        return
    if device.type == "cpu" and INTERPRET:
        return
    raise ValueError(
        f"timm_reid.kernels.jaccard runs Triton kernels on CUDA tensors (or on CPU tensors under "
        f"TRITON_INTERPRET=1, for tests); got tensors on {device}. For CPU use "
        f"timm_reid.cluster.cross_camera_distance, the reference implementation."
    )


def _check_float(name: str, t: torch.Tensor, shape_doc: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D {shape_doc}; got shape {tuple(t.shape)}.")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16 or bfloat16; got {t.dtype}."
        )


def _check_out(out: torch.Tensor, rows: int, cols: int, device: torch.device) -> None:
    if out.shape != (rows, cols) or out.dtype != torch.float32:
        raise ValueError(
            f"out must be a float32 tensor of shape ({rows}, {cols}); got {out.dtype} of shape "
            f"{tuple(out.shape)}."
        )
    _check_device("out", out, device)


def cross_camera_distance(
    features: torch.Tensor,
    scores: torch.Tensor,
    camids: torch.Tensor,
    mu: float,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """IICS inter-camera distance ``1 - cos - mu * J * [cam_i != cam_j]`` as one ``(n, n)`` matrix.

    Args:
        features: ``(n, d)`` float32/float16/bfloat16, **already L2-normalised** (the dot product
            is used as the cosine).
        scores: ``(n, s)`` non-negative score vectors (concatenated per-camera softmax), any of
            the three float dtypes. Not checked for negativity (that would cost a device sync).
        camids: ``(n,)`` integer camera ids.
        mu: weight of the Jaccard term (``mu_r`` of the current round), a Python number.
        out: optional ``(n, n)`` float32 buffer to write into (any strides); it must not overlap
            the inputs.

    Returns:
        ``(n, n)`` float32, exactly symmetric, diagonal ``1 - |f_i|^2`` (~0). Not differentiable:
        the inputs are detached.
    """
    if not isinstance(features, torch.Tensor) or not isinstance(scores, torch.Tensor):
        raise TypeError("features and scores must be torch.Tensors.")
    _check_float("features", features, "(n, d)")
    _check_float("scores", scores, "(n, s)")
    n, d = features.shape
    if scores.shape[0] != n:
        raise ValueError(
            f"scores must have one row per sample: features has {n} rows, scores has "
            f"{scores.shape[0]}."
        )
    if not isinstance(camids, torch.Tensor) or camids.shape != (n,):
        got = tuple(camids.shape) if isinstance(camids, torch.Tensor) else type(camids).__name__
        raise ValueError(f"camids must be a tensor of shape ({n},); got {got}.")
    if camids.dtype.is_floating_point or camids.dtype.is_complex or camids.dtype == torch.bool:
        raise TypeError(f"camids must be an integer tensor; got {camids.dtype}.")
    device = features.device
    _check_device("scores", scores, device)
    _check_device("camids", camids, device)
    _check_backend(device)
    if isinstance(mu, torch.Tensor):
        mu = mu.item()
    if not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise ValueError(f"mu must be a finite number; got {mu!r}.")
    if d == 0 or scores.shape[1] == 0:
        raise ValueError(
            f"features and scores need at least one column; got d={d}, s={scores.shape[1]}."
        )
    features, scores = features.detach(), scores.detach()
    if out is None:
        return _cross_camera_distance_op(features, scores, camids, float(mu))
    _check_out(out, n, n, device)
    if n > 0:
        _launch(features, features, scores, scores, camids, camids, out, float(mu), cosine=True)
    return out


@_define_op("timm_reid::cross_camera_distance")
def _cross_camera_distance_op(
    features: torch.Tensor, scores: torch.Tensor, camids: torch.Tensor, mu: float
) -> torch.Tensor:
    n = features.shape[0]
    out = torch.empty((n, n), dtype=torch.float32, device=features.device)
    if n > 0:
        _launch(features, features, scores, scores, camids, camids, out, mu, cosine=True)
    return out


def weighted_jaccard(scores_a: torch.Tensor, scores_b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise weighted Jaccard ``sum min / sum max`` of the rows of two score matrices.

    ``scores_a`` is ``(m, s)``, ``scores_b`` is ``(n, s)`` (default: ``scores_a``, which runs the
    symmetric path). Returns ``(m, n)`` float32; a pair of all-zero rows gives 0.
    """
    _check_float("scores_a", scores_a, "(m, s)")
    symmetric = scores_b is None
    if symmetric:
        scores_b = scores_a
    _check_float("scores_b", scores_b, "(n, s)")
    if scores_a.shape[1] != scores_b.shape[1]:
        raise ValueError(
            f"scores_a and scores_b need the same number of columns; got {scores_a.shape[1]} and "
            f"{scores_b.shape[1]}."
        )
    device = scores_a.device
    _check_device("scores_b", scores_b, device)
    _check_backend(device)
    if scores_a.shape[1] == 0:
        raise ValueError("scores need at least one column.")
    return _weighted_jaccard_op(scores_a.detach(), scores_b.detach(), symmetric)


@_define_op("timm_reid::weighted_jaccard")
def _weighted_jaccard_op(
    scores_a: torch.Tensor, scores_b: torch.Tensor, symmetric: bool
) -> torch.Tensor:
    m, n = scores_a.shape[0], scores_b.shape[0]
    out = torch.empty((m, n), dtype=torch.float32, device=scores_a.device)
    if m > 0 and n > 0:
        _launch(None, None, scores_a, scores_b, None, None, out, 0.0, cosine=False,
                symmetric=symmetric)
    return out


def _launch(fa, fb, sa, sb, ca, cb, out, mu, *, cosine, symmetric=True):
    m, s = sa.shape
    n = sb.shape[0]
    if cosine:
        d = fa.shape[1]
        # bf16 products are exact in fp32, so upcasting changes no result, only the speed.
        upcast = INTERPRET and fa.dtype == torch.bfloat16
        precision = "ieee" if fa.dtype == torch.float32 or upcast else "tf32"
        feat_strides = (fa.stride(0), fa.stride(1), fb.stride(0), fb.stride(1))
        cam_strides = (ca.stride(0), cb.stride(0))
    else:  # the feature/camera pointers are never read; pass the scores as placeholders
        fa, fb, ca, cb = sa, sb, sa, sb
        d = 1
        precision = "ieee"
        upcast = False
        feat_strides = (0, 0, 0, 0)
        cam_strides = (0, 0)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK"]) * triton.cdiv(n, meta["BLOCK"]),)

    if INTERPRET and _is_fake(out):
        return
    from torch.library import wrap_triton

    guard = torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext()
    with guard:
        wrap_triton(_pairwise_kernel)[grid](
            fa, fb, sa, sb, ca, cb, out, mu,
            m, n, d, s,
            *feat_strides,
            sa.stride(0), sa.stride(1), sb.stride(0), sb.stride(1),
            *cam_strides,
            out.stride(0), out.stride(1),
            COSINE=cosine,
            SYMMETRIC=symmetric,
            DOT_PRECISION=precision,
            DOT_UPCAST=upcast,
            JACCARD=not cosine or mu != 0.0,
        )
