"""Shared plumbing of the AIBN and TNorm kernels: layouts, launch plans, autotune configs, op definition.

Depends on torch and triton only.

Layout: every kernel sees an activation as a logical ``(N, C, L)`` tensor with three strides
``(stride_n, stride_c, stride_l)``, ``L = H * W``. NCHW gives ``(C*L, L, 1)``, NHWC (channels-last,
or the ``(N, H, W, C)`` view inside timm ConvNeXt blocks) gives ``(L*C, 1, C)``; no permute or
``.contiguous()`` copy is made. The only copy is for the rare input whose H and W cannot be fused
into one strided axis (``stride_h != W * stride_w``, e.g. a spatial slice).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Tuple

import torch
import triton

# Triton decides at decoration time (module import) whether @triton.jit builds GPU code or the
# CPU interpreter, so this flag is read once, at the same moment.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# L positions per split of a split reduction, in units of this quantum (the largest BLOCK_L).
_CHUNK_QUANTUM = 256
# Under the interpreter: a small chunk so that the tiny test shapes take the split path.
_INTERPRET_CHUNK = 16
# Test hook: force the chunk length (None: automatic plan).
FORCE_CHUNK = None


def check_activation(x: torch.Tensor, channels_last: bool, op: str) -> None:
    if x.dim() != 4:
        layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
        raise ValueError(f"{op}: expected a 4-D input {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: the Triton kernels support {[str(d) for d in SUPPORTED_DTYPES]}, got {x.dtype}; "
            "use backend='reference' for other dtypes"
        )
    if x.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            f"{op}: Triton kernels got a CPU tensor; Triton runs on CPU only under TRITON_INTERPRET=1, "
            "which must be set before timm_reid.kernels is imported - or use backend='reference'"
        )


def ncl_view(t: torch.Tensor, channels_last: bool) -> Tuple[torch.Tensor, int, int, int, Tuple[int, int, int]]:
    """``(t', N, C, L, (stride_n, stride_c, stride_l))`` for an NCHW or (N, H, W, C) tensor.

    ``t'`` is ``t`` itself unless H and W cannot be fused into one strided axis, in which case it is
    a contiguous copy (documented exception; never the case for dense NCHW or channels-last).
    """
    if channels_last:
        n, h, w, c = t.shape
        sn, sh, sw, sc = t.stride()
    else:
        n, c, h, w = t.shape
        sn, sc, sh, sw = t.stride()
    if h == 1:
        sl = sw
    elif w == 1:
        sl = sh
    elif sh == w * sw:
        sl = sw
    else:
        t = t.contiguous()
        return ncl_view(t, channels_last)
    return t, n, c, h * w, (sn, sc, sl)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def split_plan(n: int, c: int, l: int, device: torch.device) -> Tuple[int, int]:
    """``(n_split, chunk)`` for the spatial reductions: programs are (sample, channel block, split).

    Splits L only when the (N, C-block) grid alone cannot fill the GPU (about 4 programs per SM),
    so that small batches with large maps (the stem at 64x32) still run wide. Chunks are multiples
    of the largest BLOCK_L; partial statistics are combined in a fixed order (deterministic).
    """
    if FORCE_CHUNK is not None:
        chunk = int(FORCE_CHUNK)
    elif INTERPRET and device.type == "cpu":
        chunk = _INTERPRET_CHUNK
    else:
        target = 4 * _num_sms(device)
        programs = n * triton.cdiv(c, 32)
        want = max(1, min(triton.cdiv(target, max(programs, 1)), triton.cdiv(l, _CHUNK_QUANTUM)))
        chunk = triton.cdiv(triton.cdiv(l, want), _CHUNK_QUANTUM) * _CHUNK_QUANTUM
    chunk = max(1, min(chunk, l))
    return triton.cdiv(l, chunk), chunk


def tile_configs() -> List[triton.Config]:
    """(BLOCK_L, BLOCK_C, num_warps) for the streaming kernels over (L, C) tiles.

    Channel-fast layouts (NHWC) want wide BLOCK_C, spatial-fast ones (NCHW) long BLOCK_L; the tiny
    maps of late stages (8x4 = 32 positions) want short BLOCK_L, the stem (64x32) long ones.
    Under the interpreter a single small config keeps test time down and exercises masking.
    """
    if INTERPRET:
        return [triton.Config({"BLOCK_L": 16, "BLOCK_C": 4}, num_warps=1)]
    shapes = [
        (512, 4, 8), (256, 4, 4), (128, 8, 4), (64, 16, 4), (32, 32, 4), (16, 64, 4), (8, 128, 4),
        (4, 256, 4), (32, 128, 8), (64, 64, 8), (128, 32, 8), (16, 16, 2), (32, 8, 2), (8, 32, 2),
    ]
    return [triton.Config({"BLOCK_L": bl, "BLOCK_C": bc}, num_warps=w) for bl, bc, w in shapes]


def prune_tile_configs(configs: Iterable[triton.Config], named_args: dict, **kwargs) -> List[triton.Config]:
    """Drop configs whose tile is far larger than the problem (keeps at least the smallest tile)."""
    l_max = max(8, triton.next_power_of_2(int(named_args["L"])))
    c_max = max(4, triton.next_power_of_2(int(named_args["C"])))
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_L"] <= l_max and cfg.kwargs["BLOCK_C"] <= c_max]
    if kept:
        return kept
    return [min(configs, key=lambda cfg: cfg.kwargs["BLOCK_L"] * cfg.kwargs["BLOCK_C"])]


def finalize_blocks(n: int) -> Tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_C, num_warps)`` of the per-channel finalize kernels (N x BLOCK_C tiles)."""
    if INTERPRET:
        return 4, 4, 1
    block_n = min(64, max(2, triton.next_power_of_2(n)))
    return block_n, 32, 4


def is_fake(t: torch.Tensor) -> bool:
    """True for tensors without data (fake / meta), on which kernels must not run."""
    from torch._subclasses.fake_tensor import is_fake as _is_fake

    return t.device.type == "meta" or _is_fake(t)


def define_op(name: str, mutates_args=()) -> Callable:
    """Register a Triton-backed op with ``torch.library``.

    On GPU builds: ``torch.library.triton_op`` (torch.compile / export see the kernels, which must be
    launched through ``wrap_triton``). Under ``TRITON_INTERPRET=1``, interpreted kernels cannot run
    on the fake tensors torch.compile traces with, and triton_op would decompose the op into its
    body during tracing; the op is then an opaque ``custom_op`` whose fake implementation is the
    same function with kernel launches skipped on fake tensors (see :func:`should_launch`).
    """
    def dec(fn):
        if INTERPRET:
            op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
            op.register_fake(fn)
            return op
        return torch.library.triton_op(name, mutates_args=mutates_args)(fn)

    return dec


def should_launch(*tensors: torch.Tensor) -> bool:
    """False on fake tensors under the interpreter: the fake implementation of an opaque op only
    needs output shapes, and interpreted kernels would try to read the (absent) data."""
    return not (INTERPRET and any(is_fake(t) for t in tensors))


def check_running(running: Optional[torch.Tensor], rows: int, c: int, name: str, op: str) -> None:
    if running is None:
        return
    if running.numel() != rows * c or not running.is_contiguous():
        raise ValueError(
            f"{op}: {name} must be a contiguous tensor of {rows * c} elements ({rows} x {c}), "
            f"got shape {tuple(running.shape)} with strides {running.stride()}"
        )
