"""Small training heads and losses of the pretraining methods (kept here, not shared with
``timm_reid.train``, so that the two pipelines can change independently)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BNNeckHead", "batch_hard_triplet"]


class BNNeckHead(nn.Sequential):
    """BN-neck (BatchNorm1d, bias frozen at 0) + bias-free Linear with N(0, 0.001) weights
    (Luo et al., "Bag of Tricks"; the same head as ``timm_reid.train``)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(nn.BatchNorm1d(in_features), nn.Linear(in_features, num_classes, bias=False))
        nn.init.ones_(self[0].weight)
        nn.init.zeros_(self[0].bias)
        self[0].bias.requires_grad_(False)
        nn.init.normal_(self[1].weight, std=0.001)


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, *, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss on Euclidean distances (Hermans et al. 2017): per anchor, the
    farthest same-label and the nearest other-label sample; anchors without either are skipped."""
    sq = features.pow(2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2.0 * features @ features.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    d_ap = dist.masked_fill(~same | eye, float("-inf")).max(1).values
    d_an = dist.masked_fill(same, float("inf")).min(1).values
    valid = torch.isfinite(d_ap) & torch.isfinite(d_an)
    if not valid.any():
        return features.sum() * 0.0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()
