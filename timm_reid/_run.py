"""The run layer shared by training (:mod:`timm_reid.train`) and pretraining
(:mod:`timm_reid.pretrain`), importing neither: the user-error types, atomic writers, pickle-free
checkpoint loading and seeding.

Writers never leave a half-written file: they write ``PATH.tmp`` and ``os.replace`` it. Checkpoints
hold only tensors and plain Python values (dict, list, str, int, float, bool, None), so they load
with ``torch.load(..., weights_only=True)``: a crafted file cannot run code on load.

Seeding: every random stream of a step (augmentation, sampling, head init, ...) is seeded from
:func:`derive_seed` of the run's seed and the step's coordinates when the step starts, so a run
resumed at a step boundary draws exactly the numbers the uninterrupted run drew.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import zipfile
from typing import Sequence, Tuple

import numpy as np
import torch

from timm_reid._records import looks_like_torch_file

__all__ = ["CheckpointError", "ConfigError", "atomic_save", "atomic_write_text", "derive_seed", "load_checkpoint",
           "seed_everything", "write_json", "write_jsonl"]


class ConfigError(ValueError):
    """An option value, an option combination or a config file that cannot work; the message
    names the option, the value and the fix (command lines print it and exit with status 2)."""


class CheckpointError(ValueError):
    """A file that is not a readable timm-reid checkpoint (truncated, empty, foreign, or holding
    objects that only unpickling could rebuild)."""


# ------------------------------------------------------------------------------------------ writers

def atomic_save(obj, path) -> None:
    """``torch.save`` to ``path + '.tmp'``, then ``os.replace`` (never a half-written file)."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(obj, path) -> None:
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def write_jsonl(records, path) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


# ------------------------------------------------------------------------------------------ checkpoints

def load_checkpoint(path, *, required: Sequence[str] = ("args", "model"), writer: str = "timm_reid.train") -> dict:
    """The dict stored in a timm-reid checkpoint (``last.pth``, ``final.pth``, ...).

    Loads with ``weights_only=True``: objects other than tensors and plain values are refused,
    never rebuilt. Raises :class:`CheckpointError` (a ``ValueError``) naming the file when it is
    not a readable timm-reid checkpoint or lacks the ``required`` entries (``writer`` names the
    command line that writes such files), ``FileNotFoundError`` when it does not exist.
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
            f"written by {writer}, or a backbone file (backbone.safetensors).") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        raise CheckpointError(
            f"{path} is not a readable timm-reid checkpoint (truncated, empty or not a torch file: "
            f"{type(e).__name__}: {_first_line(e)}). Re-copy it, or use the run's other checkpoint "
            "(final.pth / last.pth).") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        entries = " and ".join(f"'{key}'" for key in required)
        raise CheckpointError(f"{path} is not a timm-reid training checkpoint: expected a dict with {entries} "
                              f"entries (a checkpoint written by {writer})")
    return state


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ------------------------------------------------------------------------------------------ seeding

def derive_seed(seed: int, coordinates: Sequence[Tuple[int, int]] = (), salt: int = 0) -> int:
    """The seed of one step: ``(seed * 1_000_003 + sum(index * weight) + salt) mod 2**31`` over the
    step's ``(index, weight)`` coordinates (round, stage, epoch, ...). Each caller keeps its own
    weights and salt, so the seeds of runs written before this function existed are unchanged."""
    return (seed * 1_000_003 + sum(index * weight for index, weight in coordinates) + salt) % (2**31)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
