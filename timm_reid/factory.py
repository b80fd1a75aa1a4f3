"""`create_model`: `timm.create_model` + `patch`, and loading a checkpoint of either model.

A ReID run starts from an ImageNet checkpoint of the plain backbone and saves checkpoints of the
patched one, so both must load into the patched model:

- unpatched checkpoint: the keys the patch added (AIBN gates, AIBN running statistics where a
  LayerNorm was replaced, TNorm buffers) are missing and keep their initial values; the
  `num_batches_tracked` counters of replaced BatchNorms are unexpected and dropped (AIBN does not
  count batches).
- patched checkpoint: every key matches.

Any other missing or unexpected key is an error that lists the keys: a silently half-loaded
backbone is the worst outcome here. Checkpoints with a different classifier (an ImageNet head
on a `num_classes=0` model) should go through timm's own pretrained loading instead:
`pretrained=True, pretrained_cfg_overlay=dict(file=path)`, which adapts or drops the head.
"""
from __future__ import annotations

import os
from typing import Optional, Set

import timm
from timm.models import load_state_dict
from torch import nn

from .surgery import Stages, _check_config, apply_config, warn_if_pretrained_layernorms_replaced

__all__ = ["create_model", "load_checkpoint"]


def create_model(
    model_name: str,
    *,
    aibn: Stages = (),
    tnorm: Stages = (),
    num_cameras: Optional[int] = None,
    gate: str = "block",
    gate_init: float = 0.1,
    mix: str = "var",
    tnorm_mode: str = "transform",
    downsample: bool = True,
    last_stride: Optional[int] = None,
    entry: str = "blend",
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    **timm_kwargs,
) -> nn.Module:
    """Create a timm model, patch it, and optionally load a local checkpoint into it.

    The patch keywords are those of `timm_reid.patch` (so `create_model(name, **model.timm_reid_config)`
    rebuilds a patched model); `pretrained` and the remaining keywords go to `timm.create_model`,
    whose pretrained weights load before patching. With no patch keyword the model is a plain timm
    model that still accepts `model(x, camids=...)`, so a baseline runs through the same code.

    Args:
        model_name: any timm model name of a supported family (see `timm_reid.patch`), including
            `convnext_iso_*`.
        checkpoint_path: `.pth`/`.pth.tar` (plain state_dict, or a dict holding it under
            "state_dict" or "model") or `.safetensors`, saved from the unpatched or the patched
            model; loaded after patching.
    """
    config = _check_config(
        aibn=aibn, tnorm=tnorm, num_cameras=num_cameras, gate=gate, gate_init=gate_init, mix=mix,
        tnorm_mode=tnorm_mode, downsample=downsample, last_stride=last_stride, entry=entry,
    )
    model = timm.create_model(model_name, pretrained=pretrained, **timm_kwargs)
    unpatched_keys = set(model.state_dict())
    apply_config(model, config)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, unpatched_keys)
        warn_if_pretrained_layernorms_replaced(model)
    return model


def load_checkpoint(model: nn.Module, checkpoint_path: str, unpatched_keys: Set[str]) -> None:
    """Load a checkpoint of the unpatched or the patched model into the patched `model`.

    Args:
        unpatched_keys: `state_dict` keys of the model before `patch()`; they tell which keys the
            patch added (may be missing) and removed (may be present, are dropped).
    """
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"checkpoint_path={checkpoint_path!r} is not a file")
    state_dict = load_state_dict(checkpoint_path, use_ema=False)
    patched_keys = set(model.state_dict())
    added, removed = patched_keys - unpatched_keys, unpatched_keys - patched_keys
    missing = patched_keys - set(state_dict) - added
    unexpected = set(state_dict) - patched_keys - removed
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path} does not fit this model (neither its unpatched nor its patched form): "
            f"{len(missing)} missing keys {_some(missing)}, {len(unexpected)} unexpected keys {_some(unexpected)}. "
            "Check the model name, num_classes and the patch options (a patched checkpoint needs the "
            "timm_reid_config it was saved with); for an ImageNet checkpoint with another head use "
            "pretrained=True, pretrained_cfg_overlay=dict(file=path)."
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in patched_keys}, strict=False)


def _some(keys: Set[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return str(keys[:limit])[:-1] + (", ...]" if len(keys) > limit else "]")
