"""Portable trained backbones: one pickle-free ``.safetensors`` file that rebuilds the patched model.

    timm_reid.save_backbone(model, "run/backbone.safetensors", model_name="convnext_atto",
                            input_size=(64, 32))
    model = timm_reid.load_backbone("run/backbone.safetensors")   # or the run directory

The file holds the backbone's ``state_dict`` (no training heads) and, in the safetensors header
metadata under ``"timm_reid"``, a JSON record: the timm model name, the patch configuration
(``model.timm_reid_config``, the keywords of :func:`timm_reid.create_model`), the extra
``timm.create_model`` keywords (``num_classes=0``, ...) and the input size ``(H, W)`` it was trained
at; for a dual-stream backbone (:func:`timm_reid.models.dual_stream`, GUR) also the split
(``"dual_stream"``: infrared camera ids, camera count, specific stages), which loading applies
again before the weights (the loaded model then needs ``camids=`` in every forward). Loading
never unpickles anything.

Shared tensors (AIBN gates shared by the norms of a block, ``gate="block"``) are stored once per
``state_dict`` key; loading writes the same value into the shared Parameter once per key.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ._permissions import as_umask_allows
from ._records import FORMAT_VERSION, METADATA_KEY, check_timm_kwargs, read_record
from .surgery import patch_options

__all__ = ["save_backbone", "load_backbone", "read_backbone_metadata", "save_hub_folder", "BACKBONE_FILE",
           "FORMAT_VERSION"]

BACKBONE_FILE = "backbone.safetensors"


def save_backbone(
    model: nn.Module,
    path: str,
    *,
    model_name: str,
    input_size: Sequence[int],
    timm_kwargs: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> str:
    """Write ``model`` (a backbone from :func:`timm_reid.create_model`, patched or not) to ``path``.

    Args:
        model_name: the timm model name it was built from.
        input_size: ``(height, width)`` the backbone was trained at; evaluation uses it by default.
        timm_kwargs: extra ``timm.create_model`` keywords needed to rebuild it (default
            ``{"num_classes": 0}``, a pooled-feature backbone); only the shape keywords of
            ``timm_reid._records.TIMM_KWARGS`` (num_classes, global_pool, in_chans, drop rates).
        extra: JSON-serialisable facts to keep with it (e.g. how it was trained).

    The write is atomic (temporary file + ``os.replace``) and the file gets the permissions the
    umask allows, as any file the user writes. Returns ``path``.
    """
    from safetensors.torch import save_file

    record = {
        "format_version": FORMAT_VERSION,
        "model_name": str(model_name),
        "patch": patch_options(model).to_dict(),
        "timm_kwargs": _plain(check_timm_kwargs({"num_classes": 0} if timm_kwargs is None else timm_kwargs,
                                                "save_backbone")),
        "input_size": [int(s) for s in input_size],
        "extra": _plain(extra or {}),
    }
    split = getattr(model, "timm_reid_dual_stream", None)
    if split is not None:  # a dual-stream model: load_backbone splits the rebuilt model again
        record["dual_stream"] = _plain(split)
    if len(record["input_size"]) != 2:
        raise ValueError(f"input_size must be (height, width), got {tuple(input_size)}")
    # One copy per key: safetensors refuses tensors that share memory (shared AIBN gates).
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(record)})
    as_umask_allows(tmp)  # safetensors writes 0600
    os.replace(tmp, path)
    return path


def save_hub_folder(model: nn.Module, folder: str, **save_for_hf_kwargs: Any) -> str:
    """timm's hub-style folder of ``model`` (``config.json`` + ``model.safetensors``, what
    ``timm.models.push_to_hf_hub`` uploads), with the patch options recorded in ``config.json``
    under ``"timm_reid"``, so that ``timm_reid.create_model("local-dir:" + folder, pretrained=True)``
    rebuilds the patched model. ``save_for_hf_kwargs`` go to ``timm.models.save_for_hf``
    (``data_config=``, ``model_args=``). Plain timm cannot load a patched folder (it builds the
    unpatched model). Returns ``folder``."""
    from timm.models import save_for_hf

    record = {METADATA_KEY: {"format_version": FORMAT_VERSION, "patch": patch_options(model).to_dict()}}
    save_for_hf(model, folder, model_config=record, safe_serialization=True, **save_for_hf_kwargs)
    as_umask_allows(os.path.join(folder, "model.safetensors"))  # safetensors writes 0600
    return folder


def read_backbone_metadata(path: str) -> Dict[str, Any]:
    """The JSON record stored with a backbone file (see the module docstring), checked: a damaged
    or foreign record is a ``ValueError`` naming the file."""
    return read_record(_resolve(path))


def load_backbone(path: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the patched timm backbone saved by :func:`save_backbone` (eval mode, no heads).

    Args:
        path: a ``.safetensors`` backbone file, or a run directory holding ``backbone.safetensors``.

    The returned model carries the stored record as ``model.timm_reid_backbone`` (its
    ``"input_size"`` is the size to evaluate at).
    """
    from .factory import create_model
    from .options import PatchOptions

    path = _resolve(path)
    record = read_backbone_metadata(path)
    options = PatchOptions.from_dict(record["patch"], source=f"{path} (backbone record)")
    split = record.get("dual_stream")
    if split is None:
        model = create_model(record["model_name"], options, checkpoint_path=path, **record["timm_kwargs"])
    else:  # the weights are those of the split model: split first, then load them
        from ._records import read_weights
        from .models.dual_stream import dual_stream

        model = create_model(record["model_name"], options, **record["timm_kwargs"])
        dual_stream(model, split["infrared_cameras"], num_cameras=split["num_cameras"],
                    specific_stages=split["specific_stages"])
        model.load_state_dict(read_weights(path)[0])
    model.timm_reid_backbone = record
    return model.to(device).eval()


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        candidate = os.path.join(path, BACKBONE_FILE)
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f"{path} is a folder without {BACKBONE_FILE}")
        return candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone file {path} does not exist")
    return path


def _plain(value):
    """JSON-safe copy (tuples -> lists); raises on anything else non-JSON."""
    return json.loads(json.dumps(value))
