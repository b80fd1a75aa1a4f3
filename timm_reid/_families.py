"""Where stages, blocks and norms live in each model family that `timm_reid.patch` supports.

One table (`FAMILIES`) instead of one function per architecture: a family is recognised by the
type of the residual blocks in its stage-1 container, and every family is described by the same
few facts (where stage k's blocks are, where its separate downsample layer is, which exact norm
types it uses and their memory layout, how to drop the stride of stage 4). `surgery.py` does the
swapping with these facts and knows nothing about any particular architecture.

Matching is by exact type: timm's `LayerNorm`/`LayerNorm2d` and torchvision's `LayerNorm2d` all
subclass `nn.LayerNorm`, and an `isinstance` test would confuse the NHWC and NCHW variants.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torchvision.models.convnext as tv_convnext
import torchvision.models.resnet as tv_resnet
from timm.layers import LayerNorm, LayerNorm2d, RmsNorm, RmsNorm2d, SimpleNorm, SimpleNorm2d
from timm.models.convnext import ConvNeXtBlock
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .layers import AIBN, TNorm

# Anything that normalizes with statistics; finding one of these that a family does not list is an
# error (silently leaving it in place would give a half-patched stage).
_NORM_BASES = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
    RmsNorm, RmsNorm2d, SimpleNorm, SimpleNorm2d,
)


@dataclass(frozen=True)
class Family:
    """Facts about one model family; stage numbers k start at 1 (docs/DESIGN.md section 4).

    Attributes:
        name: shown by `describe()` and in error messages.
        covers: the architectures it covers, for the "unsupported model" error.
        block_types: residual block classes that identify the family (children of stage 1).
        stage_paths: k -> candidate module paths of stage k's block container (an `nn.Sequential`);
            several candidates because `features_only=True` flattens `stages.0` to `stages_0`.
        downsample_paths: k -> candidate paths of a downsample layer that is not inside a block.
        norm_layouts: exact norm type -> True if it runs on an NHWC tensor (channels-last).
        unstride: how `last_stride=1` removes the downsampling of stage 4 ("resnet" or "patchify").
    """

    name: str
    covers: str
    block_types: Tuple[type, ...]
    stage_paths: Callable[[int], Tuple[str, ...]]
    downsample_paths: Callable[[int], Tuple[str, ...]]
    norm_layouts: Mapping[type, bool]
    unstride: str


def _no_paths(k: int) -> Tuple[str, ...]:
    return ()


FAMILIES: Tuple[Family, ...] = (
    Family(
        name="timm ConvNeXt",
        covers="timm convnext_* and convnextv2_* (stages.0-3), timm_reid convnext_iso_* (4 block groups)",
        block_types=(ConvNeXtBlock,),
        stage_paths=lambda k: (f"stages.{k - 1}.blocks", f"stages_{k - 1}.blocks"),
        downsample_paths=lambda k: (f"stages.{k - 1}.downsample", f"stages_{k - 1}.downsample"),
        norm_layouts={LayerNorm: True, LayerNorm2d: False},
        unstride="patchify",
    ),
    Family(
        name="timm ResNet",
        covers="timm resnet*, resnet*d, resnext*, seresnet*, seresnext* (layer1-4)",
        block_types=(BasicBlock, Bottleneck),
        stage_paths=lambda k: (f"layer{k}",),
        downsample_paths=_no_paths,
        norm_layouts={nn.BatchNorm2d: False},
        unstride="resnet",
    ),
    Family(
        name="torchvision ResNet",
        covers="torchvision resnet*, resnext*, wide_resnet* (layer1-4)",
        block_types=(tv_resnet.BasicBlock, tv_resnet.Bottleneck),
        stage_paths=lambda k: (f"layer{k}",),
        downsample_paths=_no_paths,
        norm_layouts={nn.BatchNorm2d: False},
        unstride="resnet",
    ),
    Family(
        name="torchvision ConvNeXt",
        covers="torchvision convnext_* (features.1/3/5/7, downsample features.2/4/6)",
        block_types=(tv_convnext.CNBlock,),
        stage_paths=lambda k: (f"features.{2 * k - 1}",),
        downsample_paths=lambda k: (f"features.{2 * k - 2}",) if k > 1 else (),
        norm_layouts={nn.LayerNorm: True, tv_convnext.LayerNorm2d: False},
        unstride="patchify",
    ),
)


def supported_families() -> str:
    """One line per family, for error messages."""
    return "; ".join(f"{family.name}: {family.covers}" for family in FAMILIES) + (
        "; and features_only=True wrappers of the timm models"
    )


@dataclass(frozen=True)
class Stage:
    """A resolved stage: its number, block container and separate downsample layer (if any)."""

    index: int
    blocks_path: str
    blocks: nn.Sequential
    downsample_path: Optional[str]
    downsample: Optional[nn.Module]


@dataclass(frozen=True)
class NormSite:
    """One norm to replace: where it is, its layout and the residual block (gate group) it is in."""

    path: str
    parent: nn.Module
    name: str
    module: nn.Module
    channels_last: bool
    block: str
    downsample: bool


def find_family(model: nn.Module) -> Tuple[Family, List[Stage]]:
    """The family of `model` and its stages; raises TypeError naming the supported families."""
    modules = dict(model.named_modules())
    for family in FAMILIES:
        stages = _resolve_stages(family, modules)
        if stages:
            return family, stages
    raise TypeError(
        f"timm_reid does not know where the stages of {type(model).__name__} are. "
        f"Supported: {supported_families()}. Patch the backbone before wrapping it (DDP, EMA, ...)."
    )


def _resolve_stages(family: Family, modules: Dict[str, nn.Module]) -> List[Stage]:
    stages = []
    while True:
        k = len(stages) + 1
        blocks_path = _first_present(family.stage_paths(k), modules)
        if blocks_path is None or not _is_block_container(modules[blocks_path], family):
            return stages
        downsample_path = _first_present(family.downsample_paths(k), modules)
        downsample = modules[downsample_path] if downsample_path is not None else None
        stages.append(Stage(k, blocks_path, modules[blocks_path], downsample_path, downsample))


def _first_present(paths: Tuple[str, ...], modules: Dict[str, nn.Module]) -> Optional[str]:
    return next((path for path in paths if path in modules), None)


def _is_block_container(module: nn.Module, family: Family) -> bool:
    return isinstance(module, nn.Sequential) and len(module) > 0 and isinstance(module[0], family.block_types)


def norm_sites(family: Family, stage: Stage) -> List[NormSite]:
    """Every norm of a stage in module order: block norms, then the separate downsample norm.

    Raises ValueError if the stage already holds AIBN or a norm type the family does not list.
    """
    containers = [(stage.blocks_path, stage.blocks, True)]
    if stage.downsample is not None:
        containers.insert(0, (stage.downsample_path, stage.downsample, False))
    sites = []
    for prefix, container, has_blocks in containers:
        for name, module in container.named_modules():
            if isinstance(module, TNorm) or not (isinstance(module, AIBN) or isinstance(module, _NORM_BASES)):
                continue
            path = f"{prefix}.{name}" if name else prefix
            _check_replaceable(family, stage, path, module)
            parent_name, _, attr = name.rpartition(".")
            sites.append(NormSite(
                path=path,
                parent=container.get_submodule(parent_name),
                name=attr,
                module=module,
                channels_last=family.norm_layouts[type(module)],
                block=f"{prefix}.{name.split('.')[0]}" if has_blocks else prefix,
                downsample=not has_blocks or "downsample" in name.split("."),
            ))
    return sites


def _check_replaceable(family: Family, stage: Stage, path: str, module: nn.Module) -> None:
    if isinstance(module, AIBN):
        raise ValueError(
            f"stage {stage.index} already has AIBN layers ({path}); each stage can be patched with "
            "aibn once - build a fresh model to change its configuration"
        )
    if type(module) not in family.norm_layouts:
        known = ", ".join(sorted(t.__name__ for t in family.norm_layouts))
        raise TypeError(
            f"{path} is a {type(module).__name__}; in a {family.name} stage timm_reid can replace only "
            f"{known}. Build the model with its default norm layer."
        )


def stage_channels(stage: Stage) -> int:
    """Output channels of a stage: the width of the last norm (or AIBN) of its last block.

    True for every family here (ResNet bn2/bn3 or downsample BN, ConvNeXt block norm), and it
    needs no forward pass.
    """
    last_block = [child for child in stage.blocks.children() if not isinstance(child, TNorm)][-1]
    norms = [m for m in last_block.modules() if isinstance(m, (AIBN,) + _NORM_BASES)]
    return norms[-1].num_features if hasattr(norms[-1], "num_features") else norms[-1].normalized_shape[0]


def unstride_stage4(model: nn.Module, family: Family, stage: Stage) -> List[str]:
    """Remove the downsampling at the entry of stage 4 in place; returns the changed module paths.

    "resnet": the first block's stride-2 convs (conv1/conv2 and the downsample 1x1) get stride 1
    and a ResNet-D average pool becomes `nn.Identity` - the IICS/torchreid "last stride 1",
    without dilation. "patchify": the 2x2 stride-2 downsample conv of ConvNeXt runs with stride 1
    over the input padded by one zero row/column (bottom, right), so the output keeps stage 3's
    resolution and the pretrained kernel is reused unchanged.
    """
    if family.unstride == "resnet":
        changed = _unstride_block(stage.blocks[0], f"{stage.blocks_path}.0")
    else:
        changed = _unstride_patchify(model, stage)
    if not changed:
        raise ValueError(
            "last_stride=1: stage 4 of this model does not downsample (already last_stride=1, a dilated "
            "output_stride model or an isotropic ConvNeXt); leave last_stride=None"
        )
    return changed


def _unstride_block(block: nn.Module, prefix: str) -> List[str]:
    changed = []
    for name, module in list(block.named_modules()):
        stride = getattr(module, "stride", None)
        if stride in (None, 1, (1, 1)) or next(module.children(), None) is not None:
            continue  # blocks also carry a `stride` attribute; only leaf layers stride
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d):
            parent_name, _, attr = name.rpartition(".")
            setattr(block.get_submodule(parent_name), attr, nn.Identity())
        else:
            raise TypeError(f"last_stride=1: cannot remove the stride of {prefix}.{name} ({type(module).__name__})")
        changed.append(f"{prefix}.{name}")
    return changed


def _unstride_patchify(model: nn.Module, stage: Stage) -> List[str]:
    layers = stage.downsample
    if not isinstance(layers, nn.Sequential) or not isinstance(layers[-1], nn.Conv2d):
        return []
    conv_name, conv = list(layers.named_children())[-1]
    if tuple(conv.stride) == (1, 1):
        return []
    if tuple(conv.kernel_size) != tuple(conv.stride) or tuple(conv.padding) != (0, 0):
        raise TypeError(
            f"last_stride=1 expects a non-overlapping patchify conv at {stage.downsample_path}.{conv_name}, "
            f"got kernel {conv.kernel_size}, stride {conv.stride}, padding {conv.padding}"
        )
    kh, kw = conv.kernel_size
    conv.stride = (1, 1)
    children = [(name, child) for name, child in layers.named_children() if child is not conv]
    children += [("pad", nn.ZeroPad2d((0, kw - 1, 0, kh - 1))), (conv_name, conv)]
    # Same child names as before, so the keys `...downsample.0.*` / `...downsample.1.*` stay valid.
    padded = nn.Sequential(collections.OrderedDict(children)).train(layers.training)
    parent_path, _, attr = stage.downsample_path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, padded)
    return [f"{stage.downsample_path}.{conv_name}"]
