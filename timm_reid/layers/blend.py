"""AIBN entered beside a pretrained norm: ``y = base(x) + b * (AIBN(x) - base(x))``, ``b`` from 0.

Replacing a pretrained ConvNeXt LayerNorm (statistics over channels at each position) by AIBN
(statistics over positions, per channel) changes the normalisation itself; the pretrained function
is lost before any training. ``BlendedAIBN`` keeps the original norm as the base and lets training
move towards AIBN through a learned blend weight ``b = clamp(blend, 0, 1)`` that starts at
``blend_init`` (0: the patched model computes exactly what the pretrained one computed).

Both branches share the affine (``weight``, ``bias``) and, for a BatchNorm base, the running
statistics, so the unpatched ``state_dict`` keys stay valid and only ``gate`` and ``blend`` are new.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aibn import AIBN

__all__ = ["BlendedAIBN", "BASES"]

BASES = ("layernorm", "batchnorm")


class BlendedAIBN(AIBN):
    """AIBN blended into the norm it replaces (see the module docstring).

    Args:
        num_features: channels C.
        base: the pretrained norm kept as the base branch: "layernorm" (over channels at each
            position, as timm ``LayerNorm``/``LayerNorm2d``) or "batchnorm" (``nn.BatchNorm2d``
            semantics: batch statistics in training, the running statistics in eval).
        blend_init: initial blend weight ``b`` in [0, 1] (0: exactly the base norm).
        **aibn_kwargs: the keywords of :class:`AIBN` (gate, mix, eps, channels_last, ...).

    The running statistics are updated by the AIBN branch's rule (for a BatchNorm base they are
    the BatchNorm's own buffers, which the base branch reads in eval).
    """

    def __init__(self, num_features: int, *, base: str, blend_init: float = 0.0, **aibn_kwargs) -> None:
        super().__init__(num_features, **aibn_kwargs)
        if base not in BASES:
            raise ValueError(f"BlendedAIBN: base must be one of {BASES}, got {base!r}")
        if isinstance(blend_init, bool) or not isinstance(blend_init, (int, float)) or not 0.0 <= blend_init <= 1.0:
            raise ValueError(f"BlendedAIBN: blend_init must be a number in [0, 1], got {blend_init!r}")
        self.base = base
        self.blend = nn.Parameter(torch.full((1,), float(blend_init)))

    def forward(self, x: Tensor) -> Tensor:
        adaptive = super().forward(x)
        base = self._base(x)
        return base + self.blend_weight().to(base.dtype) * (adaptive - base)  # b == 0: the base norm, bit for bit

    def blend_weight(self) -> Tensor:
        """``clamp(blend, 0, 1)`` in value, with the gradient of the identity.

        A plain clamp has zero gradient at its bounds, so a blend starting at exactly 0 would never
        move; the straight-through form lets training leave 0 (and come back from beyond a bound).
        """
        return self.blend + (self.blend.clamp(0.0, 1.0) - self.blend).detach()

    def _base(self, x: Tensor) -> Tensor:
        if self.base == "batchnorm":
            # Training: batch statistics, with no running buffers passed, so that this branch writes
            # none (the AIBN branch updates them once per forward, and has saved them for its backward).
            if self.training:
                return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        if self.channels_last:
            return F.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)
        # As timm/torchvision LayerNorm2d: to NHWC, normalise over channels, back.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_features,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base!r}"
