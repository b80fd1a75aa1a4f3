"""The op contract both backends share: mode names, TNorm's mode dispatch and its errors.

Plain Python and torch, no triton: ``timm_reid.layers`` (the reference math and the modules)
imports this module too, so that what a TNorm forward computes in each mode, and the error a
missing camera id gives, is written once (docs/DESIGN.md section 3.2 and 3.3). It lives here
because ``kernels/`` may import nothing of timm_reid; importing ``timm_reid.kernels._contract``
does not import triton (the package's ``__init__`` loads the kernel modules lazily).
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

__all__ = ["MIX_MODES", "TNORM_MODES", "check_mix", "check_tnorm_mode", "tnorm_plan", "pooled_stats"]

MIX_MODES = ("var", "std")
TNORM_MODES = ("transform", "normalize")

# What a TNorm forward computes (the rows of the table in docs/DESIGN.md 3.2).
IDENTITY = "identity"  # output x, nothing recorded
RECORD = "record"  # output x; training: each camera present updates its running row
CONVERT = "convert"  # re-style every sample to its target camera (and record, in training with ids)
NORMALIZE = "normalize"  # per-camera normalization with the shared affine


def check_mix(mix: str, op: str) -> None:
    if mix not in MIX_MODES:
        raise ValueError(f"{op}: mix must be one of {MIX_MODES}, got {mix!r}")


def check_tnorm_mode(mode: str, op: str) -> None:
    if mode not in TNORM_MODES:
        raise ValueError(f"{op}: mode must be one of {TNORM_MODES}, got {mode!r}")


def tnorm_plan(
    mode: str, *, training: bool, convert: bool, has_camids: bool, has_targets: bool, op: str = "tnorm", how: str = ""
) -> str:
    """What one TNorm forward computes: :data:`IDENTITY`, :data:`RECORD`, :data:`CONVERT` or
    :data:`NORMALIZE`, or the error for inputs the mode cannot work with.

    ``op`` names the caller in the error (a layer passes its own description), ``how`` is appended
    to the messages about missing camera ids (the layer says how to pass them).
    """
    check_tnorm_mode(mode, op)
    tail = f"; {how}" if how else ""
    if mode == "normalize":
        if training and not has_camids:
            raise ValueError(f"{op}: mode='normalize' in training needs camera ids{tail}")
        return NORMALIZE
    if convert:
        if not has_targets:
            raise ValueError(f"{op}: convert=True needs target camera ids")
        if not training and not has_camids:
            raise ValueError(f"{op}: conversion in eval mode needs the source camera ids{tail}")
        return CONVERT
    return RECORD if training and has_camids else IDENTITY


def pooled_stats(running_mean: Tensor, running_var: Tensor, keepdim: bool = False) -> Tuple[Tensor, Tensor]:
    """Statistics of the union of all cameras, each camera weighted equally (``mode="normalize"``
    in eval without camera ids): ``(C,)`` each, ``(1, C)`` with ``keepdim``."""
    mean = running_mean.mean(0, keepdim=True)
    var = running_var.mean(0, keepdim=True) + ((running_mean - mean) ** 2).mean(0, keepdim=True)
    return (mean, var) if keepdim else (mean[0], var[0])


def segments_or_batch(camids: Optional[Tensor], n: int, num_cameras: int, device) -> Tuple[Tensor, int]:
    """``(segments, num_segments)``: one segment per camera with ids, the whole batch without."""
    import torch

    if camids is not None:
        return camids, num_cameras
    return torch.zeros(n, dtype=torch.int64, device=device), 1
