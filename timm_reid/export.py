"""Exporting a patched model with its camera ids as graph inputs (ONNX).

A patched model takes its camera ids as keywords, ``model(x, camids=..., convert=..., targets=...)``;
a forward pre-hook moves them into the model's camera context before ``forward`` runs. Exporters
check the call against ``forward``'s own signature before any hook runs, so exporting the patched
model itself with ``kwargs={"camids": ...}`` fails. :class:`ExportableReID` is the exportable form:
a module whose ``forward`` takes the ids positionally and passes them on as keywords::

    net = timm_reid.export.ExportableReID(model)              # eval mode; TNorm conversion
    torch.onnx.export(net, (x, camids, targets), "reid.onnx", dynamo=True,
                      input_names=["x", "camids", "targets"])
    # or: timm_reid.export.export_onnx(model, "reid.onnx", x, camids, targets)   (dynamic batch)

``convert=True`` (default) exports IIDS style conversion: every image is re-styled from the
statistics of its camera ``camids[i]`` to those of ``targets[i]`` in each TNorm. ``convert=False``
exports ``model(x, camids=camids)``: TNorm in ``mode="normalize"`` standardises each image by its
camera's statistics; in ``mode="transform"`` (and AIBN-only models) the camera ids are unused.

Not exportable or scriptable: the patched model called with camera keywords directly (use this
wrapper), ``torch.jit.script`` of a patched model (its layers take keyword-only arguments, which
TorchScript does not support; use ``torch.onnx.export(..., dynamo=True)`` or ``torch.export``),
training-mode graphs (running statistics are updated in place) and the Triton kernels (export
traces the PyTorch reference path).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .layers import TNorm

__all__ = ["ExportableReID", "export_onnx"]


class ExportableReID(nn.Module):
    """``forward(x, camids, targets)`` -> ``model(x, camids=camids, convert=True, targets=targets)``.

    Args:
        model: a model patched by :func:`timm_reid.patch` / :func:`timm_reid.create_model`. It is
            put in eval mode (export records eval-mode statistics, never updates them).
        convert: export TNorm style conversion (``targets`` required); with ``False`` the graph is
            ``forward(x, camids)`` -> ``model(x, camids=camids)``.

    Camera ids are int64 tensors of shape ``(N,)`` in ``[0, num_cameras)``; exported graphs do not
    check the range (an id out of range reads another camera's statistics or fails in the runtime).
    """

    def __init__(self, model: nn.Module, *, convert: bool = True):
        super().__init__()
        tnorms = [m for m in model.modules() if isinstance(m, TNorm)]
        if convert and not tnorms:
            raise ValueError("ExportableReID(convert=True) needs a model with TNorm layers (patch it with tnorm=[...]); "
                             "for an AIBN-only or unpatched model export the model itself, or pass convert=False")
        self.model = model.eval()
        self.convert = convert
        self.num_cameras = tnorms[0].num_cameras if tnorms else None
        super().train(False)

    def forward(self, x: Tensor, camids: Tensor, targets: Optional[Tensor] = None) -> Tensor:
        if self.convert:
            if targets is None:
                raise ValueError("ExportableReID(convert=True) needs targets: the camera every image is converted to")
            return self.model(x, camids=camids, convert=True, targets=targets)
        return self.model(x, camids=camids)

    def train(self, mode: bool = True) -> "ExportableReID":
        if mode:
            raise ValueError("ExportableReID is for export and inference; train the wrapped model itself")
        return super().train(False)


def export_onnx(
    model: nn.Module,
    path: str,
    x: Tensor,
    camids: Tensor,
    targets: Optional[Tensor] = None,
    *,
    dynamic_batch: bool = True,
    output_names: Sequence[str] = ("features",),
) -> str:
    """Export ``model`` (wrapped in :class:`ExportableReID`, converting when ``targets`` is given) to
    ONNX at ``path`` with inputs ``x``, ``camids`` (and ``targets``); the batch dimension stays
    dynamic unless ``dynamic_batch=False``. Needs ``onnx`` and ``onnxscript`` (``pip install
    "timm-reid[onnx]"``). ``model`` keeps its training mode (every submodule's). Returns ``path``."""
    modes = [(m, m.training) for m in model.modules()]  # export needs eval; the caller's model keeps its modes
    try:
        return _export(ExportableReID(model, convert=targets is not None), path, x, camids, targets,
                       dynamic_batch=dynamic_batch, output_names=output_names)
    finally:
        for module, training in modes:
            module.training = training


def _export(net, path, x, camids, targets, *, dynamic_batch, output_names):
    inputs = (x, camids) if targets is None else (x, camids, targets)
    names = ["x", "camids", "targets"][: len(inputs)]
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = {name: {0: batch} for name in names}
    with torch.no_grad():
        torch.onnx.export(net, inputs, path, input_names=names, output_names=list(output_names), dynamo=True,
                          dynamic_shapes=dynamic_shapes)
    return path
