"""Atomic checkpoint and JSON writing, pickle-free loading, and per-stage seeding.

Checkpoints hold only tensors and plain Python values (dict, list, str, int, float, bool, None), so
they load with ``torch.load(..., weights_only=True)``: a crafted file cannot run code on load.

Every random stream of a stage (augmentation, sampling, TNorm conversion targets, head init) is
seeded from ``(seed, round, stage)`` when the stage starts, so a run resumed at a stage boundary
draws exactly the numbers the uninterrupted run drew.
"""

import json
import os
import pickle
import random
import zipfile

import numpy as np
import torch

from timm_reid._records import looks_like_torch_file
from timm_reid.train.errors import CheckpointError

STAGE_INDEX = {"intra": 0, "inter": 1}


def atomic_save(obj, path):
    """``torch.save`` to ``path + '.tmp'``, then ``os.replace`` (never a half-written file)."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text, path):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(obj, path):
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def write_jsonl(records, path):
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def load_checkpoint(path):
    """The dict stored in a ``timm_reid.train`` checkpoint (``last.pth``, ``final.pth``, ...).

    Loads with ``weights_only=True``: objects other than tensors and plain values are refused,
    never rebuilt. Raises :class:`CheckpointError` (a ``ValueError``) naming the file when it is
    not a readable timm-reid checkpoint, ``FileNotFoundError`` when it does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not looks_like_torch_file(path):  # random bytes also end here
            raise CheckpointError(f"{path} is not a readable timm-reid checkpoint (not a torch file). Re-copy it, "
                                  "or use the run's other checkpoint (final.pth / last.pth).") from None
        # weights_only refuses globals it does not know: a crafted or foreign pickle.
        raise CheckpointError(
            f"{path} is not a readable timm-reid checkpoint: it holds Python objects that only "
            f"unpickling could rebuild, which timm-reid never does ({_first_line(e)}). Use a checkpoint "
            "written by timm_reid.train, or a backbone file (backbone.safetensors).") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        raise CheckpointError(
            f"{path} is not a readable timm-reid checkpoint (truncated, empty or not a torch file: "
            f"{type(e).__name__}: {_first_line(e)}). Re-copy it, or use the run's other checkpoint "
            "(final.pth / last.pth).") from None
    if not isinstance(state, dict) or "args" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a timm-reid training checkpoint: expected a dict with 'args' "
                              "and 'model' entries (a checkpoint written by timm_reid.train)")
    return state


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def stage_seed(seed, round_index, stage):
    return (seed * 1_000_003 + round_index * 97 + STAGE_INDEX[stage] * 7 + 1) % (2**31)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
