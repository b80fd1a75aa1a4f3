"""Isotropic ConvNeXt (Liu et al. 2022, section 5 "isotropic ConvNeXt"), registered in timm.

timm has no isotropic ConvNeXt, but the headline configuration of "Revisiting Person Re-ID:
ConvNeXt with AIBN and TNorm" is Iso-ConvNeXt-S. The network is a 16x16 patchify stem followed by
`depth` ConvNeXt blocks that all run at one resolution and width (no downsampling, no layer scale,
as the official isotropic models).

The blocks are grouped into 4 `stages` so that `timm_reid.patch` numbers them like a hierarchical
ConvNeXt: `aibn=[3, 4]` covers the last half of the blocks, `tnorm=[1, 2, 3]` sits after the first
three groups. Each group is timm's own `ConvNeXtStage` (its downsample is `nn.Identity`), so the
surgery needs no special case. Depth 18 cannot be cut into 4 equal groups; the split is (5, 4, 5, 4)
so that groups 1-2 and 3-4 are each exactly half of the blocks.

Variants (parameter counts with the 1000-class head):
    convnext_iso_small  dim 384,  depth 18 (5, 4, 5, 4)   22.3M
    convnext_iso_base   dim 768,  depth 18 (5, 4, 5, 4)   87.0M
    convnext_iso_large  dim 1024, depth 36 (9, 9, 9, 9)  306M
    convnext_iso_test   dim 32,   depth 4  (1, 1, 1, 1)   tiny, for tests
No pretrained weights are published for these; `pretrained=True` loads a local file given through
timm's `pretrained_cfg_overlay=dict(file=...)`.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm, LayerNorm2d, NormMlpClassifierHead, calculate_drop_path_rates, trunc_normal_
from timm.models._features import feature_take_indices
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXtStage

__all__ = ["ConvNeXtIsotropic"]


class ConvNeXtIsotropic(nn.Module):
    """Patchify stem + isotropic ConvNeXt blocks in 4 groups (`stages`) + timm's ConvNeXt head.

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs; 0 removes the classifier (features only, as for ReID).
        global_pool: Pooling of the head ('avg', 'max', ...; '' keeps the feature map).
        dim: Width of every block.
        depths: Blocks per group; the groups are the `stages` that `timm_reid.patch` numbers 1-4.
        patch_size: Stem kernel and stride (the only downsampling in the network).
        kernel_size: Depthwise kernel of the blocks.
        ls_init_value: Layer-scale init; None (official isotropic setting) disables layer scale.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            dim: int = 384,
            depths: Sequence[int] = (5, 4, 5, 4),
            patch_size: int = 16,
            kernel_size: int = 7,
            ls_init_value: Optional[float] = None,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        rates = _per_block_rates(drop_path_rate, depths)
        self.stages = nn.Sequential(*[
            ConvNeXtStage(
                dim, dim, kernel_size=kernel_size, stride=1, depth=depth, drop_path_rates=group_rates,
                ls_init_value=ls_init_value, conv_mlp=False, norm_layer=LayerNorm2d, norm_layer_cl=LayerNorm,
            )
            for depth, group_rates in zip(depths, rates)
        ])
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"stages.{i}") for i in range(len(depths))]
        self.num_features = self.head_hidden_size = dim
        self.norm_pre = nn.Identity()  # name kept for parity with timm ConvNeXt (head norm comes after pooling)
        self.head = NormMlpClassifierHead(
            dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, norm_layer=LayerNorm2d, act_layer="gelu",
        )
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Outputs of the selected block groups (timm's `forward_intermediates` contract, NCHW only)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; ConvNeXtIsotropic returns 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _per_block_rates(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic depth rising linearly over all blocks (official isotropic schedule), cut into groups."""
    rates = calculate_drop_path_rates(drop_path_rate, sum(depths))
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start:start + depth] for start, depth in zip(starts, depths)]


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) conv/linear weights and zero biases, as the official ConvNeXt."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _create_convnext_iso(variant: str, pretrained: bool = False, **kwargs) -> ConvNeXtIsotropic:
    return build_model_with_cfg(
        ConvNeXtIsotropic, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem", "classifier": "head.fc", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "convnext_iso_small": _cfg(),
    "convnext_iso_base": _cfg(),
    "convnext_iso_large": _cfg(),
    "convnext_iso_test": _cfg(input_size=(3, 64, 32), pool_size=(4, 2)),
})


@register_model
def convnext_iso_small(pretrained: bool = False, **kwargs) -> ConvNeXtIsotropic:
    model_args = dict(dim=384, depths=(5, 4, 5, 4))
    return _create_convnext_iso("convnext_iso_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_iso_base(pretrained: bool = False, **kwargs) -> ConvNeXtIsotropic:
    model_args = dict(dim=768, depths=(5, 4, 5, 4))
    return _create_convnext_iso("convnext_iso_base", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_iso_large(pretrained: bool = False, **kwargs) -> ConvNeXtIsotropic:
    model_args = dict(dim=1024, depths=(9, 9, 9, 9))
    return _create_convnext_iso("convnext_iso_large", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_iso_test(pretrained: bool = False, **kwargs) -> ConvNeXtIsotropic:
    model_args = dict(dim=32, depths=(1, 1, 1, 1))
    return _create_convnext_iso("convnext_iso_test", pretrained=pretrained, **dict(model_args, **kwargs))
