"""Atomic checkpoint and JSON writing, and per-stage seeding (what makes ``--resume`` exact).

Every random stream of a stage (augmentation, sampling, TNorm conversion targets, head init) is
seeded from ``(seed, round, stage)`` when the stage starts, so a run resumed at a stage boundary
draws exactly the numbers the uninterrupted run drew.
"""

import json
import os
import random

import numpy as np
import torch

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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def stage_seed(seed, round_index, stage):
    return (seed * 1_000_003 + round_index * 97 + STAGE_INDEX[stage] * 7 + 1) % (2**31)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
