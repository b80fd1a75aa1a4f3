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

from . import functional as reference
from ._autograd import adaptive_backward, adaptive_forward, nhwc_memory
from .aibn import AIBN, inside_backward
from .backend import layer_backend

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
        if self.process_group is None and layer_backend(self, x) == "triton":
            # The fused Triton op (timm_reid.kernels.blend); a process group takes the composition below.
            from .backend import triton_ops

            reference.check_input(x, self.num_features, self.channels_last, f"BlendedAIBN({self.num_features})")
            update = self.training and not inside_backward()
            return triton_ops().blend(
                x, self.weight, self.bias, self.gate, self.blend,
                self.running_mean if update or not self.training else None,
                self.running_var if update or not self.training else None,
                base=self.base, training=self.training, momentum=self.momentum, eps=self.eps, mix=self.mix,
                channels_last=self.channels_last,
            )
        if self._fused(x):
            return self._fused_forward(x)
        adaptive = super().forward(x)
        base = self._base(x)
        # One fused op instead of sub, mul, add. lerp computes start + b * (end - start) for
        # b < 0.5, so b == 0 gives the base norm bit for bit.
        return torch.lerp(base, adaptive, self.blend_weight().to(base.dtype))

    def blend_weight(self) -> Tensor:
        """``clamp(blend, 0, 1)`` in value, with the gradient of the identity.

        A plain clamp has zero gradient at its bounds, so a blend starting at exactly 0 would never
        move; the straight-through form lets training leave 0 (and come back from beyond a bound).
        """
        return self.blend + (self.blend.clamp(0.0, 1.0) - self.blend).detach()

    def _fused(self, x: Tensor) -> bool:
        """The one-Function CPU/torch path (:class:`BlendFunction`) where it applies: not the
        Triton backend, no process group, fp32/fp64, something to differentiate or update, and no
        tracer or compiler (they take the plain composition below)."""
        wanted = self.training or (torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, self.weight, self.bias, self.gate, self.blend)))
        return (wanted and self.process_group is None and x.dtype in (torch.float32, torch.float64)
                and self.weight.dtype == x.dtype and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling() and layer_backend(self, x) != "triton")

    def _fused_forward(self, x: Tensor) -> Tensor:
        reference.check_input(x, self.num_features, self.channels_last, f"BlendedAIBN({self.num_features})")
        update = self.training and not inside_backward()
        y, seg_mean, seg_var = BlendFunction.apply(
            x, self.weight, self.bias, self.gate, self.blend, self.running_mean, self.running_var,
            self.base, self.training, self.mix, self.eps, self.channels_last,
        )
        if update:
            reference.update_running(self.running_mean, seg_mean[0], self.momentum)
            reference.update_running(self.running_var, seg_var[0], self.momentum)
        return y

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


class BlendFunction(torch.autograd.Function):
    """``lerp(base(x), AIBN(x), b)`` as one Function: each branch's native or fast kernels, no
    composition ops, and neither AIBN's output nor its input gradient at ``b == 0``.

    Forward: the base through PyTorch's own kernel (``native_batch_norm`` / ``native_layer_norm``:
    the values of ``F.batch_norm`` / ``F.layer_norm``, bit for bit) and AIBN through
    :func:`~timm_reid.layers._autograd.adaptive_forward`, blended in place into the base output.
    Backward: both branches' input gradients with their weights pre-scaled by ``1 - b`` and ``b``
    (so no pass scales them), summed into one buffer; ``d b = sum_c weight_c (S_aibn - S_base)``
    with ``S = sum dy * xhat``, the per-channel sums both backward reductions produce anyway.
    Outputs ``(y, seg_mean, seg_var)``: AIBN's batch statistics for the running update.
    ``blend`` is the raw parameter: ``b = clamp(blend, 0, 1)`` is taken here and its gradient
    passed straight through, as :meth:`BlendedAIBN.blend_weight` does (four ops fewer per call).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gate, blend, running_mean, running_var, base, training, mix, eps, channels_last):
        ctx.set_materialize_grads(False)  # no zero gradients made for the statistics outputs
        b = min(max(float(blend), 0.0), 1.0)
        # BatchNorm's eval backward reads the running statistics; in training none are passed, so
        # later in-place updates of the buffers cannot touch what this backward uses.
        bn_stats = (running_mean, running_var) if base == "batchnorm" and not training else (None, None)
        if base == "batchnorm":
            y, save_mean, save_invstd = torch.native_batch_norm(x, weight, bias, *bn_stats, training, 0.0, eps)
        else:
            xl = x if channels_last else x.permute(0, 2, 3, 1)
            y, save_mean, save_invstd = torch.native_layer_norm(xl, (x.shape[-1 if channels_last else 1],), weight, bias, eps)
            y = y if channels_last else y.permute(0, 3, 1, 2)
        eval_mean, eval_var = (None, None) if training else (running_mean, running_var)
        ctx.flip = nhwc_memory(x, channels_last)
        adaptive, seg_mean, seg_var, count, saved = adaptive_forward(
            x.permute(0, 2, 3, 1) if ctx.flip else x, weight, bias, gate, eval_mean, eval_var, None, 1, mix, eps,
            channels_last or ctx.flip, None, output=b != 0,
        )
        if b != 0:
            y = y.lerp_(adaptive.permute(0, 3, 1, 2) if ctx.flip else adaptive, b)
        ctx.save_for_backward(x, *saved, save_mean, save_invstd, *bn_stats)
        ctx.config = (training, 1, mix, channels_last or ctx.flip, None)
        ctx.blend_config = (b, base, training, eps, channels_last)
        ctx.mark_non_differentiable(seg_mean, seg_var)
        return y, seg_mean, seg_var

    @staticmethod
    def backward(ctx, dy, *_):
        if dy is None:  # y took no part in the loss
            return (None,) * 12
        saved = ctx.saved_tensors  # unpacked once (gradient checkpointing allows no second time)
        x, adaptive_saved, (save_mean, save_invstd, bn_mean, bn_var) = saved[0], saved[1:-4], saved[-4:]
        weight, bias = adaptive_saved[1:3]
        b, base, training, eps, channels_last = ctx.blend_config
        need_dx, need_dgate = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        mask = [need_dx, True, True]
        if base == "batchnorm":
            dx, base_sum, dbias = torch.ops.aten.native_batch_norm_backward(
                dy, x, weight * (1 - b), bn_mean, bn_var, save_mean, save_invstd, training, eps, mask)
        else:
            to_nhwc = (lambda t: t) if channels_last else (lambda t: t.permute(0, 2, 3, 1))
            dx, base_sum, dbias = torch.ops.aten.native_layer_norm_backward(
                to_nhwc(dy), to_nhwc(x), (weight.shape[0],), save_mean, save_invstd, weight * (1 - b), bias, mask)
            dx = dx if dx is None or channels_last else dx.permute(0, 3, 1, 2)
        dx_aibn, sum_dy_xhat, _, dgate = adaptive_backward(
            adaptive_saved, ctx.config, dy.permute(0, 2, 3, 1) if ctx.flip else dy, weight * b,
            need_dx and b != 0, need_dgate and b != 0)
        if need_dgate and dgate is None:  # b == 0: AIBN unused, a zero gradient (as autograd gives)
            dgate = torch.zeros_like(adaptive_saved[3])
        aibn_sum = sum_dy_xhat.sum(0)
        if dx_aibn is not None:
            dx = dx.add_(dx_aibn.permute(0, 3, 1, 2) if ctx.flip else dx_aibn)
        dweight = torch.lerp(base_sum, aibn_sum, b) if ctx.needs_input_grad[1] else None
        dblend = (weight * (aibn_sum - base_sum)).sum().reshape(1) if ctx.needs_input_grad[4] else None
        return dx, dweight, dbias, dgate, dblend, None, None, None, None, None, None, None
