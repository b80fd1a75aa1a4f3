"""Zero-shot retrieval of a backbone on a ReID test split (no fine-tuning)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

__all__ = ["zero_shot"]


def zero_shot(backbone: torch.nn.Module, dataset, *, height: int, width: int, batch_size: int = 128,
              workers: int = 0, progress: bool = False) -> dict:
    """mAP, rank-1/5/10 and mINP (fractions) of ``backbone``'s pooled features on ``dataset``'s
    query/gallery split (a :class:`~timm_reid.data.ReIDDataset`), flip-averaged, cosine distance."""
    from timm_reid.data import ImageDataset, build_transforms
    from timm_reid.evaluation import evaluate, extract_features

    transform = build_transforms(height, width, train=False)
    feats = []
    for records in (dataset.query, dataset.gallery):
        if not records:
            raise ValueError(f"dataset {dataset.name} has an empty query or gallery split")
        loader = DataLoader(ImageDataset(records, transform), batch_size=batch_size, num_workers=workers)
        feats.append(extract_features(backbone, loader, progress=progress))
    (qf, qp, qc), (gf, gp, gc) = feats
    metrics = evaluate(query_features=qf, gallery_features=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    return {k: float(metrics[k]) for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}
