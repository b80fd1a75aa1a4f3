"""What a weights file says about itself: the backbone record, and the patch options stored with weights.

A backbone file (`timm_reid.save_backbone`) carries a JSON record in its safetensors metadata. The
record is data from a file: it may choose the architecture and a few shape keywords, never where
timm reads weights from (`pretrained`, `checkpoint_path`, `pretrained_cfg_overlay`, hub or folder
model names would make `timm.create_model` go to the network or open other files). Every record is
checked here before anything is built from it; a damaged one is one `ValueError` naming the file.

Kept apart from `backbone.py` (which builds models through `factory`) so that `factory` can read
the options stored with a checkpoint without an import cycle.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .options import PatchOptions

__all__ = ["METADATA_KEY", "FORMAT_VERSION", "TIMM_KWARGS", "read_record", "check_timm_kwargs",
           "read_weights", "OPTIONS_KEY", "options_entry", "check_stored_options", "looks_like_torch_file"]

METADATA_KEY = "timm_reid"
FORMAT_VERSION = 1
# Where a torch checkpoint (.pth) written by timm-reid keeps its PatchOptions.to_dict().
OPTIONS_KEY = "patch_options"
_RECORD_KEYS = ("format_version", "model_name", "patch", "timm_kwargs", "input_size", "extra")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1


# The timm.create_model keywords a record may set, each with what makes its value acceptable.
TIMM_KWARGS = {
    "num_classes": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "global_pool": (lambda v: isinstance(v, str) and v in ("", "avg", "max", "avgmax", "catavgmax", "token"),
                    "one of '', 'avg', 'max', 'avgmax', 'catavgmax', 'token'"),
    "in_chans": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "drop_rate": (_is_rate, "a number in [0, 1)"),
    "drop_path_rate": (_is_rate, "a number in [0, 1)"),
}


def check_timm_kwargs(kwargs: Any, where: str) -> Dict[str, Any]:
    """`kwargs` if every key is allowed in a backbone record and every value fits, else `ValueError`."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{where}: timm_kwargs must be a mapping, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key not in TIMM_KWARGS:
            raise ValueError(
                f"{where}: timm_kwargs {key!r} is not allowed in a backbone record (allowed: "
                f"{', '.join(TIMM_KWARGS)}); a record may not make timm download weights or open other files"
            )
        accept, what = TIMM_KWARGS[key]
        if not accept(value):
            raise ValueError(f"{where}: timm_kwargs {key}={value!r} must be {what}")
    return dict(kwargs)


def _check_model_name(name: Any, where: str) -> str:
    import timm

    if not isinstance(name, str) or ":" in name or not timm.is_model(name):
        raise ValueError(
            f"{where}: model_name {name!r} is not a timm model name of this installation (hub and folder "
            "names are not allowed in a record)"
        )
    return name


def check_record(record: Any, path: str) -> Dict[str, Any]:
    """The record with its parts checked (types, allowed timm keywords, patch options)."""
    where = f"{path} (backbone record)"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}; the file is damaged or not written by "
                         "timm_reid.save_backbone")
    version = record["format_version"]
    if not _is_int(version) or version < 1:
        raise ValueError(f"{where}: format_version {version!r} is not a positive int")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has backbone format {version}; this timm-reid reads up to {FORMAT_VERSION}: "
                         "upgrade timm-reid")
    _check_model_name(record["model_name"], where)
    PatchOptions.from_dict(record["patch"], source=where)
    check_timm_kwargs(record["timm_kwargs"], where)
    size = record["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"{where}: input_size {size!r} must be [height, width], two ints >= 1")
    if not isinstance(record["extra"], dict):
        raise ValueError(f"{where}: extra must be a JSON object, got {type(record['extra']).__name__}")
    if "dual_stream" in record:
        check_dual_stream(record["dual_stream"], where)
    return record


def check_dual_stream(split: Any, where: str) -> Dict[str, Any]:
    """The optional ``dual_stream`` entry of a record (``timm_reid.models.dual_stream``'s arguments:
    ``infrared_cameras``, ``num_cameras``, ``specific_stages``), checked."""
    ok = (isinstance(split, dict) and set(split) == {"infrared_cameras", "num_cameras", "specific_stages"}
          and isinstance(split["infrared_cameras"], list) and split["infrared_cameras"]
          and all(_is_int(c) and c >= 0 for c in split["infrared_cameras"])
          and _is_int(split["num_cameras"]) and split["num_cameras"] > max(split["infrared_cameras"])
          and _is_int(split["specific_stages"]) and split["specific_stages"] >= 0)
    if not ok:
        raise ValueError(f"{where}: dual_stream {split!r} must be an object with infrared_cameras (a non-empty list "
                         "of camera ids >= 0), num_cameras (an int above them) and specific_stages (an int >= 0)")
    return split


def read_metadata(path: str) -> Dict[str, str]:
    """The safetensors header metadata of `path` (`ValueError` naming it if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise ValueError(f"{path} is not a readable timm-reid backbone file (safetensors): {exc}") from None


def read_record(path: str) -> Dict[str, Any]:
    """The checked record of the backbone file `path`."""
    metadata = read_metadata(path)
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"{path} is a safetensors file without timm-reid metadata; a plain state_dict loads with "
            "timm_reid.create_model(name, ..., checkpoint_path=path) instead"
        )
    try:
        record = json.loads(metadata[METADATA_KEY])
    except ValueError as exc:
        raise ValueError(f"{path} (backbone record): the metadata is not valid JSON ({exc}); "
                         "the file is damaged") from None
    return check_record(record, path)


def read_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[PatchOptions]]:
    """`(state_dict, stored options or None)` of a checkpoint file, without unpickling anything.

    `.safetensors`: the tensors, and the options of a backbone record when there is one. Torch files
    (`weights_only=True`): a plain state_dict, or a dict holding it under "state_dict" or "model"
    (and, when timm-reid wrote it, the options under "patch_options").
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint_path={path!r} is not a file")
    if str(path).endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not looks_like_torch_file(path):
            raise ValueError(f"{path} is not a readable checkpoint (not a torch file: {_last_line(exc)})") from None
        raise ValueError(f"{path} holds Python objects that only unpickling could rebuild, which timm-reid never "
                         "does; save a plain state_dict (torch.save(model.state_dict(), path)) or "
                         "safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as exc:
        raise ValueError(f"{path} is not a readable checkpoint (truncated, empty or not a torch file: "
                         f"{type(exc).__name__}: {str(exc).strip()[:200]})") from None
    stored = None
    if isinstance(checkpoint, dict) and OPTIONS_KEY in checkpoint:
        stored = PatchOptions.from_dict(checkpoint[OPTIONS_KEY], source=path)
    if isinstance(checkpoint, dict):
        checkpoint = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors, plain or under "
                         "'state_dict' / 'model')")
    # as timm's clean_state_dict: weights saved from a DataParallel / DDP wrapper
    return {k[7:] if k.startswith("module.") else k: v for k, v in checkpoint.items()}, stored


def looks_like_torch_file(path: str) -> bool:
    """A ``torch.save`` file: a zip archive (torch >= 1.6) or a pickle stream (legacy format, which
    starts with the pickle protocol byte 0x80). Random bytes are neither; weights_only's refusal of
    them must not be reported as "holds Python objects"."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _last_line(error: Exception) -> str:
    """The line of torch's weights_only message that says what was found (not its closing advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()
             and not line.strip().startswith("Check the documentation")]
    return lines[-1][:200] if lines else ""


def _read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[PatchOptions]]:
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    stored = None
    if METADATA_KEY in metadata:
        stored = PatchOptions.from_dict(read_record(path)["patch"], source=f"{path} (backbone record)")
    try:
        return load_file(path, device="cpu"), stored
    except Exception as exc:
        raise ValueError(f"{path} is not a readable timm-reid backbone file (safetensors): {exc}") from None


def options_entry(model: torch.nn.Module) -> Dict[str, Any]:
    """`{"patch_options": ...}` of `model`, for a checkpoint dict (plain values, weights_only-safe)."""
    from .surgery import patch_options

    return {OPTIONS_KEY: patch_options(model).to_dict()}


def check_stored_options(model: torch.nn.Module, checkpoint: Mapping[str, Any], source: str) -> None:
    """Raise `OptionsMismatch` when the options stored in `checkpoint` do not fit `model`'s (a
    checkpoint written before options were stored is not checked)."""
    from .surgery import patch_options

    if OPTIONS_KEY in checkpoint:
        stored = PatchOptions.from_dict(checkpoint[OPTIONS_KEY], source=source)
        patch_options(model).check_weights_fit(stored, source)


HUB_WEIGHTS_FILE = "model.safetensors"  # timm's name for the weights of a hub-style folder


def hub_folder(model_name: str) -> Optional[str]:
    """The folder of a timm ``local-dir:FOLDER`` name whose ``config.json`` records a patch, else None."""
    if not isinstance(model_name, str) or not model_name.startswith("local-dir:"):
        return None
    folder = model_name[len("local-dir:"):]
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None  # timm reports a missing or damaged config.json itself
    return folder if isinstance(config, dict) and METADATA_KEY in config else None


def hub_folder_options(folder: str) -> PatchOptions:
    """The patch options recorded in a hub-style folder's ``config.json`` (`save_hub_folder`)."""
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        entry = json.load(f)[METADATA_KEY]
    if not isinstance(entry, dict) or "patch" not in entry:
        raise ValueError(f"{path}: the {METADATA_KEY!r} entry must be an object holding 'patch'")
    return PatchOptions.from_dict(entry["patch"], source=f"{path} ({METADATA_KEY})")
