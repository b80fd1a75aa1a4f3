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
import warnings
from typing import Any, Dict, Optional, Set

import timm
from torch import nn

from ._records import HUB_WEIGHTS_FILE, hub_folder, hub_folder_options, read_weights
from .layers.blend import BlendedAIBN
from .options import PatchOptions
from .surgery import apply_config, patch_options, warn_if_pretrained_layernorms_replaced

__all__ = ["create_model", "load_checkpoint"]

_PATCH_FIELDS = frozenset(PatchOptions.__dataclass_fields__)


def create_model(
    model_name: str,
    options: Optional[PatchOptions] = None,
    *,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm model, patch it, and optionally load a local checkpoint into it.

    The patch options are a `timm_reid.PatchOptions` or its fields as keywords (those of
    `timm_reid.patch`, so `create_model(name, **model.timm_reid_config)` rebuilds a patched model);
    `pretrained` and the remaining keywords go to `timm.create_model`, whose pretrained weights
    load before patching. With no patch option the model is a plain timm model that still accepts
    `model(x, camids=...)`, so a baseline runs through the same code.

    Args:
        model_name: any timm model name of a supported family (see `timm_reid.patch`), including
            `convnext_iso_*`; or `local-dir:FOLDER`, a hub-style folder written by
            `timm_reid.save_hub_folder` (its recorded patch options are applied, and with
            `pretrained=True` its weights load after patching).
        checkpoint_path: `.pth`/`.pth.tar` (plain state_dict, or a dict holding it under
            "state_dict" or "model") or `.safetensors`, saved from the unpatched or the patched
            model; loaded after patching. Patch options stored with the weights (a backbone file's
            record, a timm-reid checkpoint) must fit this model's (`PatchOptions.check_weights_fit`).
    """
    keywords = {k: kwargs.pop(k) for k in list(kwargs) if k in _PATCH_FIELDS}
    folder = hub_folder(model_name)
    if folder is not None:  # a patched model's hub-style folder: patch first, then load its weights
        options, checkpoint_path = _hub_options(folder, options, keywords), _hub_weights(folder, pretrained,
                                                                                         checkpoint_path)
        pretrained = False
    else:
        options = PatchOptions.from_keywords(options, keywords)
    model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    unpatched_keys = set(model.state_dict())
    apply_config(model, options)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, unpatched_keys)
        warn_if_pretrained_layernorms_replaced(model)
    return model


def _hub_options(folder: str, options: Optional[PatchOptions], keywords: Dict[str, Any]) -> PatchOptions:
    """The folder's recorded options; options given as well must fit them."""
    stored = hub_folder_options(folder)
    if options is None and not keywords:
        return stored
    given = PatchOptions.from_keywords(options, keywords)
    given.check_weights_fit(stored, f"{folder}/config.json")
    return given


def _hub_weights(folder: str, pretrained: bool, checkpoint_path: Optional[str]) -> Optional[str]:
    if pretrained and checkpoint_path is not None:
        raise ValueError("give pretrained=True (the folder's weights) or checkpoint_path, not both")
    return os.path.join(folder, HUB_WEIGHTS_FILE) if pretrained else checkpoint_path


def load_checkpoint(model: nn.Module, checkpoint_path: str, unpatched_keys: Set[str]) -> None:
    """Load a checkpoint of the unpatched or the patched model into the patched `model`.

    Args:
        unpatched_keys: `state_dict` keys of the model before `patch()`; they tell which keys the
            patch added (may be missing) and removed (may be present, are dropped).

    Raises:
        OptionsMismatch: the file stores patch options its weights do not fit this model with.
        ValueError: unreadable file, keys that fit neither form, shapes that differ.
    """
    state_dict, stored = read_weights(checkpoint_path)
    options = patch_options(model)
    if stored is not None:
        options.check_weights_fit(stored, checkpoint_path)
    patched_keys = set(model.state_dict())
    added, removed = patched_keys - unpatched_keys, unpatched_keys - patched_keys
    patched_file = stored is not None and bool(stored.aibn or stored.tnorm)
    missing = patched_keys - set(state_dict) - (set() if patched_file else added)
    unexpected = set(state_dict) - patched_keys - removed
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path} does not fit this model (neither its unpatched nor its patched form): "
            f"{len(missing)} missing keys {_some(missing)}, {len(unexpected)} unexpected keys {_some(unexpected)}. "
            "Check the model name, num_classes and the patch options (a patched checkpoint needs the "
            "timm_reid_config it was saved with); for an ImageNet checkpoint with another head use "
            "pretrained=True, pretrained_cfg_overlay=dict(file=path)."
        )
    if stored is None:
        _check_unrecorded_patch(model, state_dict, added, checkpoint_path)
    try:
        model.load_state_dict({k: v for k, v in state_dict.items() if k in patched_keys}, strict=False)
    except RuntimeError as exc:  # shapes that differ (another width, num_cameras, ...)
        raise ValueError(f"{checkpoint_path} does not fit this model: {str(exc).strip()[:600]}") from None


def _check_unrecorded_patch(model: nn.Module, state_dict: Dict[str, Any], added: Set[str], path: str) -> None:
    """Weights without stored options: tell what their keys show about the patch they were saved with.

    An AIBN gate without a blend weight can only come from `entry="replace"`; loaded into a blended
    AIBN it would run beside a base norm it was never trained with. Some but not all of the keys the
    patch adds: the file was saved from a model patched in other stages (loaded, with a warning).
    """
    for path_, module in model.named_modules():
        if isinstance(module, BlendedAIBN) and f"{path_}.gate" in state_dict and f"{path_}.blend" not in state_dict:
            raise ValueError(
                f"{path} holds AIBN weights saved with entry='replace' ({path_}.gate without {path_}.blend), "
                "but this model has entry='blend'; build it with entry='replace' (train/pretrain: "
                "--aibn-entry replace) to load them"
            )
    present = added & set(state_dict)
    if present and present != added:
        some = sorted(added - present)[:3]
        warnings.warn(
            f"{path} holds {len(present)} of the {len(added)} keys the patch adds (missing e.g. {some}) and no "
            "stored patch options: it was saved from a model patched differently; the missing ones keep their "
            "initial values", UserWarning, stacklevel=4,
        )


def _some(keys: Set[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return str(keys[:limit])[:-1] + (", ...]" if len(keys) > limit else "]")
