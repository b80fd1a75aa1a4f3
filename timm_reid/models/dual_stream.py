"""Dual-stream backbones for visible-infrared ReID: modality-specific shallow layers, shared deep
layers (the two-stream ResNet of AGW / ADCA / GUR), for every family ``timm_reid.patch`` supports.

    model = timm.create_model("resnet50", num_classes=0)
    timm_reid.patch(model, aibn=[3, 4])                      # patch first, then split
    dual_stream(model, infrared_cameras=[2, 5])              # SYSU-MM01: cameras 3 and 6
    feats = model(images, camids=camids)                     # each image takes its modality's stem

Each modality-specific module becomes a :class:`ModalityRouted` holding one copy per modality
(visible: the original weights, infrared: a copy of them); a forward sends every sample to the
copy of its modality only, so each copy's BatchNorm sees only its modality's images, as the
reference two-stream models do. The modality of a sample is the modality of its camera, read from
the camera ids the patched model already takes (``model(x, camids=...)`` or
``with timm_reid.cameras(camids):``). ``specific_stages=0`` splits the stem only (the references'
choice); ``k`` also splits stages 1..k (their blocks and downsample layers).

Apply :func:`timm_reid.patch` before ``dual_stream`` (patch finds a model's stages by the types of
their blocks, which a split stage hides). :func:`timm_reid.save_backbone` records the split
(``model.timm_reid_dual_stream``) and :func:`timm_reid.load_backbone` applies it again.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from .._families import find_family
from ..layers.cameras import current_context
from ..surgery import _camera_context

__all__ = ["ModalityRouted", "dual_stream", "STEM_PATHS"]

VISIBLE, INFRARED = 0, 1
# Modules before stage 1, per family (patch's table knows the stages, not the stems); several
# candidates where timm's features_only wrapper flattens the names.
STEM_PATHS = {
    "timm ConvNeXt": (("stem",), ("stem_0", "stem_1")),
    "timm ResNet": (("conv1", "bn1", "act1", "maxpool"),),
    "torchvision ResNet": (("conv1", "bn1", "relu", "maxpool"),),
    "torchvision ConvNeXt": (("features.0",),),
}


class ModalityRouted(nn.Module):
    """One copy of a module per modality; each sample goes through its modality's copy only.

    Attributes:
        streams: ``streams[0]`` visible, ``streams[1]`` infrared.
        camera_modality: (num_cameras,) buffer, the modality of each camera id.
    """

    def __init__(self, module: nn.Module, camera_modality: torch.Tensor, context=None):
        super().__init__()
        # A TNorm inside holds the model's shared CameraContext: the copy must hold the same one.
        memo = {id(context): context} if context is not None else {}
        self.streams = nn.ModuleList([module, copy.deepcopy(module, memo)])
        self.register_buffer("camera_modality", camera_modality.clone().long(), persistent=False)
        self.context = context
        self.path = ""

    def _camera_context(self):
        return self.context if self.context is not None and self.context.active else current_context()

    def _modalities(self, context, n: int, device) -> torch.Tensor:
        camids = context.camids if context is not None else None
        if camids is None:
            raise ValueError(
                f"{self.path or 'ModalityRouted'}: a dual-stream model needs each sample's camera id to "
                "send it through its modality's layers; call model(x, camids=camids) or run it inside "
                "`with timm_reid.cameras(camids):`")
        if camids.numel() != n:
            raise ValueError(f"{self.path}: got {camids.numel()} camera ids for a batch of {n}")
        if int(camids.min()) < 0 or int(camids.max()) >= self.camera_modality.numel():
            raise ValueError(f"{self.path}: camera ids must lie in 0..{self.camera_modality.numel() - 1}, "
                             f"got {camids.tolist()}")
        return self.camera_modality.to(device)[camids.to(device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self._camera_context()
        modality = self._modalities(context, x.shape[0], x.device)
        rows = [(modality == m).nonzero().squeeze(1) for m in (VISIBLE, INFRARED)]
        if rows[INFRARED].numel() == 0:
            return self.streams[VISIBLE](x)
        if rows[VISIBLE].numel() == 0:
            return self.streams[INFRARED](x)
        parts = [self._run_rows(m, x, rows[m], context) for m in (VISIBLE, INFRARED)]
        out = parts[0].new_empty((x.shape[0],) + parts[0].shape[1:])
        for m in (VISIBLE, INFRARED):
            out[rows[m]] = parts[m]
        return out

    def _run_rows(self, modality: int, x: torch.Tensor, rows: torch.Tensor, context) -> torch.Tensor:
        """Run the rows of one modality; TNorms inside see the camera ids (and conversion targets,
        drawn for the whole batch first) of those rows only."""
        camids, targets = context.camids, context.targets
        if context.convert and targets is None:
            targets = context.targets_for(x.shape[0], self.camera_modality.numel(), x.device)
        context.camids = camids[rows.to(camids.device)]
        context.targets = targets[rows.to(targets.device)] if targets is not None else None
        try:
            return self.streams[modality](x[rows])
        finally:
            context.camids, context.targets = camids, targets

    def extra_repr(self) -> str:
        infrared = (self.camera_modality == INFRARED).nonzero().squeeze(1).tolist()
        return f"infrared_cameras={infrared}"


def dual_stream(model: nn.Module, infrared_cameras: Sequence[int], *, num_cameras: int | None = None,
                specific_stages: int = 0) -> nn.Module:
    """Split ``model``'s stem (and stages ``1..specific_stages``) into visible and infrared copies,
    in place; returns ``model``. ``infrared_cameras``: 0-based camera ids of the infrared cameras;
    ``num_cameras`` defaults to ``max(infrared_cameras) + 1`` plus any visible cameras above it
    (pass it when the highest camera id is a visible one)."""
    infrared = sorted({int(c) for c in infrared_cameras})
    if not infrared or infrared[0] < 0:
        raise ValueError(f"infrared_cameras must name at least one camera id >= 0, got {list(infrared_cameras)}")
    total = num_cameras if num_cameras is not None else infrared[-1] + 1
    if total <= infrared[-1]:
        raise ValueError(f"num_cameras={total} is too small for infrared camera id {infrared[-1]}")
    if any(isinstance(m, ModalityRouted) for m in model.modules()):
        raise ValueError("this model is already dual-stream; build a fresh model to split it differently")
    family, stages = find_family(model)
    if not 0 <= specific_stages < len(stages):
        raise ValueError(f"specific_stages must be 0..{len(stages) - 1} (at least one stage stays shared), "
                         f"got {specific_stages}")
    camera_modality = torch.zeros(total, dtype=torch.long)
    camera_modality[infrared] = INFRARED
    context = _camera_context(model)
    modules = dict(model.named_modules())
    stems = [c for c in STEM_PATHS[family.name] if all(p in modules for p in c)]
    if not stems:
        raise TypeError(f"dual_stream: no stem of {type(model).__name__} found at "
                        f"{' or '.join(map(str, STEM_PATHS[family.name]))}")
    paths = list(stems[0])
    for stage in stages[:specific_stages]:
        paths += [p for p in (stage.downsample_path, stage.blocks_path) if p is not None]
    for path in paths:
        routed = ModalityRouted(model.get_submodule(path), camera_modality, context)
        routed.path = path
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, routed.train(model.training))
    # what save_backbone records so that load_backbone splits the rebuilt model the same way
    model.timm_reid_dual_stream = {"infrared_cameras": infrared, "num_cameras": int(total),
                                   "specific_stages": int(specific_stages)}
    return model
