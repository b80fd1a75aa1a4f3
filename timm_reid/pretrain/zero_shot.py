"""Zero-shot retrieval of a backbone on a ReID test split (no fine-tuning)."""
from __future__ import annotations

import torch

__all__ = ["zero_shot"]


def zero_shot(backbone: torch.nn.Module, dataset, *, height: int, width: int, batch_size: int = 128,
              workers: int = 0, progress: bool = False) -> dict:
    """mAP, rank-1/5/10 and mINP (fractions) of ``backbone``'s pooled features on ``dataset``'s
    query/gallery split (a :class:`~timm_reid.data.ReIDDataset`), flip-averaged, cosine distance
    (:func:`timm_reid.evaluation.evaluate_split`, protocol ``"reid"``)."""
    from timm_reid.data import build_transforms
    from timm_reid.evaluation import evaluate_split

    if not (dataset.query and dataset.gallery):
        raise ValueError(f"dataset {dataset.name} has an empty query or gallery split")
    metrics = evaluate_split(backbone, dataset, transform=build_transforms(height, width, train=False),
                             batch_size=batch_size, workers=workers, val=False, progress=progress)["test"]
    return {k: float(metrics[k]) for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}
