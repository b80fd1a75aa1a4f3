"""AIBN: adaptive instance-batch normalization (IICS, CVPR 2021) as an ``nn.Module``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from timm_reid.kernels import _contract

from . import functional as F
from ._autograd import adaptive_norm
from ._checks import check_count, check_gate_init
from .backend import check_backend, layer_backend, triton_ops

__all__ = ["AIBN", "inside_backward", "recording_graph"]


def inside_backward() -> bool:
    """True while autograd runs a backward pass, e.g. gradient-checkpoint recomputation.

    Layers skip their running-statistics update then, so recomputed forwards do not count twice.
    """
    if torch.compiler.is_compiling():
        # A compiled region replays recomputation inside its own backward graph, without forward
        # side effects; asking autograd here would only break the graph.
        return False
    return torch._C._current_graph_task_id() != -1


def recording_graph() -> bool:
    """True while a forward is recorded rather than run: ``torch.jit.trace``, the TorchScript-based
    ONNX exporter, ``torch.compile`` / ``torch.export`` (dynamo).

    The fused autograd.Function of the torch path is opaque to these recorders (trace checks fail,
    dynamo loses its placeholders), so eval forwards take the plain-ops reference path while one runs.
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class AIBN(nn.Module):
    """Adaptive instance-batch normalization (docs/DESIGN.md 3.1).

    Per channel, mixes each image's own statistics with batch statistics through a learnable gate:
    ``mu = (1 - w) mu_in + w mu_bn``, ``var = (1 - w) var_in + w var_bn`` (``mix="var"``, IICS
    Eq. 12) or ``sigma = (1 - w) sigma_in + w sigma_bn`` (``mix="std"``, Qureshi & Dehghani), with
    ``w = clamp(gate, 0, 1)``. **The gate weights the batch side**; the papers' alpha/rho weight the
    instance side, i.e. ``alpha = 1 - w``. ``w = 1`` is BatchNorm with unbiased instance variances
    pooled, ``w = 0`` InstanceNorm.

    Args:
        num_features: channels C.
        gate_init: initial gate value in [0, 1] (0.1, as the reference).
        mix: "var" or "std".
        momentum: running statistics weight of the new value (PyTorch convention).
        eps: added to the variance.
        channels_last: input is ``(N, H, W, C)`` (the NHWC view inside timm ConvNeXt blocks).
        gate: an existing ``nn.Parameter`` of shape (1,) to share (IICS shares one per residual
            block); a new one is created when None.
        backend: "auto", "triton" or "reference" (see :mod:`timm_reid.layers.backend`).
        process_group: all-reduce batch statistics (and their gradients) over this group.
    """

    def __init__(
        self,
        num_features: int,
        *,
        gate_init: float = 0.1,
        mix: str = "var",
        momentum: float = 0.1,
        eps: float = 1e-5,
        channels_last: bool = False,
        gate: Optional[nn.Parameter] = None,
        backend: str = "auto",
        process_group=None,
    ) -> None:
        super().__init__()
        check_count(num_features, "num_features", "AIBN")
        _contract.check_mix(mix, "AIBN")
        if gate is None:
            gate_init = check_gate_init(gate_init, "AIBN")
        if gate is not None and (not isinstance(gate, nn.Parameter) or gate.shape != (1,)):
            raise ValueError("AIBN: gate= must be an nn.Parameter of shape (1,) (e.g. another AIBN's .gate)")
        self.num_features = num_features
        self.mix = mix
        self.momentum = momentum
        self.eps = eps
        self.channels_last = channels_last
        self.backend = check_backend(backend)
        self.process_group = process_group
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.gate = gate if gate is not None else nn.Parameter(torch.full((1,), gate_init))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_state_dict_post_hook(_gate_entry_of_its_own)

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        F.check_input(x, self.num_features, self.channels_last, f"AIBN({self.num_features})")
        update = self.training and not inside_backward()
        if layer_backend(self, x) == "triton":
            return triton_ops().aibn(
                x, self.weight, self.bias, self.gate,
                self.running_mean if update or not self.training else None,
                self.running_var if update or not self.training else None,
                training=self.training, momentum=self.momentum, eps=self.eps, mix=self.mix,
                channels_last=self.channels_last, process_group=self.process_group,
            )
        if not self.training and (recording_graph() or not (torch.is_grad_enabled() and _any_requires_grad(
                x, self.weight, self.bias, self.gate))):
            # Inference, and any eval forward a tracer or compiler records: the reference math itself
            # (plain ops, which autograd differentiates and every exporter understands).
            return F.aibn(
                x, self.weight, self.bias, self.gate, self.running_mean, self.running_var,
                training=False, eps=self.eps, mix=self.mix, channels_last=self.channels_last,
            )
        eval_stats = {} if self.training else {"eval_mean": self.running_mean, "eval_var": self.running_var}
        y, mean_bn, var_bn, _ = adaptive_norm(
            x, self.weight, self.bias, self.gate, mix=self.mix, eps=self.eps,
            channels_last=self.channels_last, process_group=self.process_group, **eval_stats,
        )
        if update:
            F.update_running(self.running_mean, mean_bn[0], self.momentum)
            F.update_running(self.running_var, var_bn[0], self.momentum)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, mix={self.mix!r}, eps={self.eps}, momentum={self.momentum}, "
            f"channels_last={self.channels_last}, backend={self.backend!r}"
        )


def _gate_entry_of_its_own(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """``state_dict`` post-hook: a copy of the gate under this AIBN's key.

    A shared gate (``patch(gate="block")``) is one Parameter listed under every AIBN that holds it;
    detached views of one storage make ``safetensors.torch.save_file(model.state_dict())`` and
    timm's hub saving refuse the dict. A one-element copy per key removes the sharing (loading
    writes the same value into the shared Parameter once per key). ``keep_vars=True`` entries (the
    Parameters themselves) stay as they are.
    """
    key = prefix + "gate"
    value = state_dict.get(key)
    if value is not None and not isinstance(value, nn.Parameter):
        state_dict[key] = value.clone()


def _any_requires_grad(*tensors: Optional[Tensor]) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)
