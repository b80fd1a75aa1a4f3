"""TNorm: camera-aware transform normalization (IIDS, TPAMI 2022) as an ``nn.Module``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from timm_reid.kernels import _contract

from . import functional as F
from ._autograd import adaptive_norm
from ._checks import check_count
from .aibn import _any_requires_grad, inside_backward
from .backend import check_backend, layer_backend, triton_ops
from .cameras import CameraContext, as_camera_tensor, current_context

__all__ = ["TNorm"]

HOW_TO_PASS = (
    "pass them with model(x, camids=camids) (or tnorm(x, camids)) or `with timm_reid.cameras(camids): model(x)`; "
    "a `timm_reid.cameras` block holds for the thread that entered it only, so a model run in another "
    "thread (a worker thread) needs model(x, camids=...)"
)


class TNorm(nn.Module):
    """Per-camera running statistics and camera-to-camera style conversion (docs/DESIGN.md 3.2).

    ``mode="transform"`` (IIDS): identity unless converting; in training each camera present in
    the batch updates its row of ``running_mean``/``running_var`` (D, C) from its own samples, and
    with ``convert=True`` every sample is re-styled from its source statistics to those of a target
    camera (drawn uniformly per sample once per forward unless ``targets`` are given).
    ``mode="normalize"`` (Qureshi & Dehghani): per-camera normalization with a shared affine.

    Camera ids come from the call (``tnorm(x, camids, convert=..., targets=...)``), else from the
    layer's ``context`` (set by :func:`timm_reid.patch` for ``model(x, camids=...)``), else from
    the innermost ``with timm_reid.cameras(...)`` block of this thread. Mixed-camera batches are
    handled as per-camera segments; a single-camera batch gives exactly the reference result.

    A training forward in ``mode="transform"`` without camera ids and without conversion is an
    error (it would record nothing and convert later with untrained statistics); a batch without
    camera ids on purpose runs inside ``with timm_reid.cameras(record=False):`` (identity). Replicas
    of ``nn.DataParallel`` are refused: they share one camera context (use DDP).
    """

    def __init__(
        self,
        num_features: int,
        num_cameras: int,
        *,
        mode: str = "transform",
        momentum: float = 0.1,
        eps: float = 1e-5,
        channels_last: bool = False,
        backend: str = "auto",
        process_group=None,
    ) -> None:
        super().__init__()
        check_count(num_features, "num_features", "TNorm")
        check_count(num_cameras, "num_cameras", "TNorm")
        _contract.check_tnorm_mode(mode, "TNorm")
        self.num_features = num_features
        self.num_cameras = num_cameras
        self.mode = mode
        self.momentum = momentum
        self.eps = eps
        self.channels_last = channels_last
        self.backend = check_backend(backend)
        self.process_group = process_group
        self.context: Optional[CameraContext] = None
        self.name: Optional[str] = None  # module path, set by surgery, used in error messages
        if mode == "normalize":
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_cameras, num_features))
        self.register_buffer("running_var", torch.ones(num_cameras, num_features))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)

    @property
    def _owner(self) -> str:
        where = f" at {self.name}" if self.name else ""
        return f"TNorm({self.num_features}, num_cameras={self.num_cameras}, mode={self.mode!r}){where}"

    def _context(self) -> Optional[CameraContext]:
        if self.context is not None and self.context.active:
            return self.context
        return current_context()

    def forward(
        self,
        x: Tensor,
        camids: Optional[Tensor] = None,
        *,
        convert: Optional[bool] = None,
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        F.check_input(x, self.num_features, self.channels_last, self._owner)
        self._refuse_data_parallel()
        ctx = self._context()
        if ctx is not None:
            camids = ctx.camids if camids is None else camids
            convert = ctx.convert if convert is None else convert
            targets = ctx.targets if targets is None else targets
        convert = bool(convert)
        camids = self._check_ids(camids, x, "camids")
        if convert and targets is None:
            targets = (ctx or CameraContext()).targets_for(x.shape[0], self.num_cameras, x.device)
        targets = self._check_ids(targets, x, "targets") if convert else None
        plan = _contract.tnorm_plan(
            self.mode, training=self.training, convert=convert, has_camids=camids is not None,
            has_targets=targets is not None, op=self._owner, how=HOW_TO_PASS,
        )
        if plan == _contract.IDENTITY:
            # A recomputed forward (gradient checkpointing) runs after the call's ids are gone.
            if self.training and not (ctx is not None and ctx.record is False) and not inside_backward():
                raise ValueError(self._missing_cameras_message())
            return x
        update = self.training and not inside_backward()
        # A recomputed forward (gradient checkpointing) updates throw-away copies.
        running_mean = self.running_mean if update else self.running_mean.clone()
        running_var = self.running_var if update else self.running_var.clone()
        kwargs = dict(
            camids=camids, targets=targets, training=self.training, convert=convert, mode=self.mode,
            weight=self.weight, bias=self.bias, momentum=self.momentum, eps=self.eps,
            channels_last=self.channels_last, process_group=self.process_group,
        )
        if layer_backend(self, x) == "triton":
            return triton_ops().tnorm(x, running_mean, running_var, **kwargs)
        if plan == _contract.NORMALIZE and torch.is_grad_enabled() and (
            self.training or _any_requires_grad(x, self.weight, self.bias)
        ):
            return self._normalize_with_grad(x, camids, running_mean, running_var)
        return F.tnorm(x, running_mean, running_var, **kwargs)

    def _missing_cameras_message(self) -> str:
        return (
            f"{self._owner}: training in mode='transform' needs camera ids: without them this forward "
            "would record no per-camera statistics and later conversions would use untrained ones "
            f"(a call like `model.train(); model(x)`). {HOW_TO_PASS[0].upper()}{HOW_TO_PASS[1:]}. To run a "
            "batch without camera ids on purpose (identity, nothing recorded), use "
            "`with timm_reid.cameras(record=False): model(x)`."
        )

    def _refuse_data_parallel(self) -> None:
        # nn.DataParallel replicas (Module._replicate_for_data_parallel sets _is_replica) share this
        # layer's camera context and run concurrently in threads: each would read another's ids.
        if getattr(self, "_is_replica", False):
            raise RuntimeError(
                f"{self._owner}: nn.DataParallel is not supported: its replicas run in threads that share "
                "one camera context, so a replica would read the camera ids of another. Use "
                "DistributedDataParallel (one process per GPU, e.g. torchrun), which keeps camera ids per "
                "process; TNorm(process_group=...) keeps its statistics global. A single-GPU "
                "nn.DataParallel does not replicate and works."
            )

    def _normalize_with_grad(self, x: Tensor, camids: Optional[Tensor], running_mean: Tensor, running_var: Tensor) -> Tensor:
        """Per-camera normalization through the analytic-backward path (AIBN with w = 1 per camera)."""
        one = torch.ones(1, device=x.device)
        if self.training:
            y, seg_mean, seg_var, count = adaptive_norm(
                x, self.weight, self.bias, one, segments=camids, num_segments=self.num_cameras,
                eps=self.eps, channels_last=self.channels_last, process_group=self.process_group,
            )
            present = count > 0
            F.update_running(running_mean, seg_mean, self.momentum, present)
            F.update_running(running_var, seg_var, self.momentum, present)
            return y
        if camids is None:
            mean, var = _contract.pooled_stats(running_mean, running_var)
        else:
            mean, var = F.rows(running_mean, camids), F.rows(running_var, camids)
        y, *_ = adaptive_norm(
            x, self.weight, self.bias, one, eval_mean=mean, eval_var=var, eps=self.eps,
            channels_last=self.channels_last,
        )
        return y

    def _check_ids(self, ids, x: Tensor, what: str) -> Optional[Tensor]:
        ids = as_camera_tensor(ids, f"{self._owner}: {what}")
        if ids is None:
            return None
        if ids.shape[0] != x.shape[0]:
            raise ValueError(
                f"{self._owner}: got {ids.shape[0]} {what} for a batch of {x.shape[0]} samples; "
                "pass one camera id per sample"
            )
        ids = ids.to(x.device)
        # The range check reads values, which export/compile cannot trace: skipped while tracing.
        if ids.numel() and not torch.compiler.is_compiling() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_cameras):
            raise ValueError(
                f"{self._owner}: {what} must lie in [0, {self.num_cameras - 1}], got values in "
                f"[{int(ids.min())}, {int(ids.max())}]; camera ids are 0-based (Market 'c1' is 0) and "
                "num_cameras must cover them all"
            )
        return ids

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_cameras={self.num_cameras}, mode={self.mode!r}, eps={self.eps}, "
            f"momentum={self.momentum}, channels_last={self.channels_last}, backend={self.backend!r}"
        )
