"""Checkpoints and seeds of the training runs: the run layer's writers and pickle-free loader
(:mod:`timm_reid._run`), and the seed of each IICS stage.

Every random stream of a stage (augmentation, sampling, TNorm conversion targets, head init) is
seeded from ``(seed, round, stage)`` when the stage starts, so a run resumed at a stage boundary
draws exactly the numbers the uninterrupted run drew.
"""

from timm_reid._run import (atomic_save, atomic_write_text, derive_seed, load_checkpoint, seed_everything, write_json,
                            write_jsonl)

__all__ = ["STAGE_INDEX", "atomic_save", "atomic_write_text", "load_checkpoint", "seed_everything", "stage_seed",
           "write_json", "write_jsonl"]

STAGE_INDEX = {"intra": 0, "inter": 1}


def stage_seed(seed, round_index, stage):
    return derive_seed(seed, ((round_index, 97), (STAGE_INDEX[stage], 7)), salt=1)
