"""Triton kernels for timm-reid, installed as ``timm_reid.kernels``.

Depends on torch and triton only; never imports the rest of timm_reid (docs/DESIGN.md section 2;
``tests/test_layout.py`` checks it).

Public entries (same contracts as ``timm_reid.layers.functional``, plus ``process_group``):

* :func:`aibn` - AIBN forward/backward (ops ``timm_reid::segment_norm_forward/backward``).
* :func:`tnorm` - TNorm statistics, conversion and ``mode="normalize"`` (ops
  ``timm_reid::tnorm_statistics``, ``timm_reid::tnorm_convert``, ``timm_reid::channel_scale``).
* :func:`tnorm_fanout` - eval conversion of every sample to every camera in one launch.
* :func:`blend` - ``BlendedAIBN``'s ``(1 - b) * base(x) + b * AIBN(x)`` (LayerNorm or BatchNorm base)
  with one read of x per pass (ops ``timm_reid::blend_forward/backward``).
* :func:`cross_camera_distance` - the IICS inter-camera distance ``1 - cos - mu * J * [cam_i !=
  cam_j]`` as one tiled kernel (op ``timm_reid::cross_camera_distance``); :func:`weighted_jaccard`.

Modules, one op each with its kernels, launcher and autograd (Liger-Kernel's layout):

* ``_stats`` forward statistics (instance and per-segment, running update, output coefficients),
  ``_apply`` the per-channel affine pass, ``_segment_norm`` the segmented normalization op that
  AIBN and TNorm ``mode="normalize"`` share (forward, backward kernels, autograd),
  ``_distributed`` its ``process_group`` path, ``_aibn`` and ``_tnorm`` the entries above,
  ``_blend`` the blended norm (its kernels, op and entry),
  ``jaccard`` the pairwise distance, ``_utils`` layouts, launch plans and op registration,
  ``_contract`` mode names and TNorm's mode dispatch (no triton; the layers import it too).

The entries are loaded on first use (PEP 562 ``__getattr__``): importing ``timm_reid.kernels`` or
``timm_reid.kernels._contract`` does not import triton. ``TRITON_INTERPRET`` is read when the first
kernel module is imported (``_utils``), and must be set before that.

All ops are registered with ``torch.library`` (``triton_op`` on GPU builds, so ``torch.compile``
sees the kernels; under ``TRITON_INTERPRET=1`` they are opaque custom ops with fake
implementations).
"""
from __future__ import annotations

import importlib

__all__ = ["aibn", "blend", "cross_camera_distance", "tnorm", "tnorm_fanout", "weighted_jaccard"]

_ENTRIES = {
    "aibn": "._aibn",
    "blend": "._blend",
    "tnorm": "._tnorm",
    "tnorm_fanout": "._tnorm",
    "cross_camera_distance": ".jaccard",
    "weighted_jaccard": ".jaccard",
}


def __getattr__(name: str):
    if name in _ENTRIES:
        value = getattr(importlib.import_module(_ENTRIES[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
