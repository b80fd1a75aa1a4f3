"""Small models of every supported family, and an independent count of the norms in their stages.

The expected counts here come from module paths and torch base types, not from timm_reid's family
table, so a wrong table entry in `timm_reid._families` shows up as a count mismatch.
"""
from __future__ import annotations

import copy
import functools
from typing import Callable, Dict, List, NamedTuple

import timm
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig

import timm_reid.models  # noqa: F401  registers convnext_iso_* in timm (timm_reid/__init__ does it too)

INPUT = (3, 64, 32)  # small ReID-shaped input: stage 4 of a stride-32 net is 2x1 (L = 2 > 1)


class Case(NamedTuple):
    build: Callable[[], nn.Module]
    stage_prefixes: Callable[[int], List[str]]  # module paths whose norms belong to stage k (from 1)


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, num_classes=0, **kwargs)


def _tv_convnext() -> nn.Module:
    blocks = [CNBlockConfig(16, 24, 1), CNBlockConfig(24, 32, 1), CNBlockConfig(32, 48, 2), CNBlockConfig(48, None, 1)]
    return torchvision.models.convnext.ConvNeXt(blocks, num_classes=10)


def _convnext_stages(k: int) -> List[str]:
    return [f"stages.{k - 1}"]


def _flat_convnext_stages(k: int) -> List[str]:
    return [f"stages_{k - 1}"]


def _resnet_stages(k: int) -> List[str]:
    return [f"layer{k}"]


def _tv_convnext_stages(k: int) -> List[str]:
    return [f"features.{2 * k - 1}"] + ([f"features.{2 * k - 2}"] if k > 1 else [])


SMALL: Dict[str, Case] = {
    # block norm: timm LayerNorm on the NHWC view (conv_mlp=False, as convnext_tiny and up)
    "convnext-nhwc": Case(_timm("test_convnext2"), _convnext_stages),
    # block norm: LayerNorm2d on NCHW (conv_mlp=True, as convnext_atto..nano)
    "convnext-nchw": Case(_timm("convnext_atto", dims=(16, 24, 32, 48), depths=(1, 1, 2, 1)), _convnext_stages),
    "convnextv2": Case(_timm("convnextv2_atto", dims=(16, 24, 32, 48), depths=(1, 1, 1, 1)), _convnext_stages),
    "convnext-iso": Case(_timm("convnext_iso_test"), _convnext_stages),
    "resnet": Case(_timm("resnet18", channels=(16, 24, 32, 48), stem_width=16), _resnet_stages),
    "resnet-d-mixed": Case(_timm("test_resnet"), _resnet_stages),  # avg-pool downsample, Basic+Bottleneck
    "resnext": Case(_timm("resnext50_32x4d", layers=(1, 1, 1, 1), channels=(32, 32, 64, 64)), _resnet_stages),
    "seresnet": Case(_timm("seresnet18", channels=(16, 24, 32, 48), stem_width=16), _resnet_stages),
    "features-convnext": Case(_timm("test_convnext2", features_only=True), _flat_convnext_stages),
    "features-resnet": Case(_timm("test_resnet", features_only=True), _resnet_stages),
    "tv-resnet": Case(lambda: torchvision.models.resnet18(num_classes=10), _resnet_stages),
    "tv-convnext": Case(_tv_convnext, _tv_convnext_stages),
}


@functools.lru_cache(maxsize=None)
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return SMALL[name].build()


def fresh(name: str) -> nn.Module:
    """A new copy of the small model `name` (built once, deep-copied per use)."""
    return copy.deepcopy(_built(name))


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm))


def norms_in_stage(model: nn.Module, case: Case, k: int) -> List[str]:
    """Paths of the norm layers of stage k of an unpatched model, by path prefix."""
    prefixes = case.stage_prefixes(k)
    return [
        path for path, module in model.named_modules()
        if is_norm(module) and any(path.startswith(prefix + ".") for prefix in prefixes)
    ]


def randomize_norm_state(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine weights and running statistics, so carried-over values are visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if is_norm(module):
                for name in ("weight", "bias", "running_mean"):
                    tensor = getattr(module, name, None)
                    if tensor is not None:
                        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2 + (name == "weight"))
                if getattr(module, "running_var", None) is not None:
                    module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, *INPUT), generator=torch.Generator().manual_seed(seed))


def output_tensor(out) -> torch.Tensor:
    """The last feature map of a features_only model, the output itself otherwise."""
    return out[-1] if isinstance(out, (list, tuple)) else out
