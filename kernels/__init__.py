"""Triton kernels for timm-reid, installed as ``timm_reid.kernels``.

Depends on torch and triton only; never imports the rest of timm_reid.

Public entries (same contracts as ``timm_reid.layers.functional``, plus ``process_group``):

* :func:`aibn` - AIBN forward/backward (ops ``timm_reid::segment_norm_forward/backward``).
* :func:`tnorm` - TNorm statistics, conversion and ``mode="normalize"`` (ops
  ``timm_reid::tnorm_statistics``, ``timm_reid::tnorm_convert``, ``timm_reid::channel_scale``).
* :func:`tnorm_fanout` - eval conversion of every sample to every camera in one launch.
* :func:`cross_camera_distance` - the IICS inter-camera distance ``1 - cos - mu * J * [cam_i !=
  cam_j]`` as one tiled kernel (op ``timm_reid::cross_camera_distance``); :func:`weighted_jaccard`.

``process_group=`` (training): only the small per-segment statistics and their gradient sums are
all-reduced between launches (:mod:`._distributed`, an eager ``autograd.Function``).

All ops are registered with ``torch.library`` (``triton_op`` on GPU builds, so ``torch.compile``
sees the kernels; under ``TRITON_INTERPRET=1`` they are opaque custom ops with fake
implementations). ``TRITON_INTERPRET`` is read when this package is first imported.
"""
from .aibn import aibn
from .jaccard import cross_camera_distance, weighted_jaccard
from .tnorm import tnorm, tnorm_fanout

__all__ = ["aibn", "cross_camera_distance", "tnorm", "tnorm_fanout", "weighted_jaccard"]
