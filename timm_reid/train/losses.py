"""Losses of the two stages: batch-hard triplet, and the IIDS self-distillation terms."""

import torch
import torch.nn.functional as F


def pairwise_euclidean(x):
    sq = x.pow(2).sum(1, keepdim=True)
    d2 = (sq + sq.t() - 2.0 * x @ x.t()).clamp(min=1e-12)
    return d2.sqrt()


def batch_hard(dist, targets):
    """Hardest positive and negative distance per anchor, and their indices."""
    same = targets[:, None] == targets[None, :]
    pos = dist.masked_fill(~same, float("-inf"))
    neg = dist.masked_fill(same, float("inf"))
    d_ap, i_ap = pos.max(1)
    d_an, i_an = neg.min(1)
    return d_ap, d_an, i_ap, i_an


def triplet_loss(features, targets, *, margin):
    """Batch-hard triplet loss on Euclidean distances (Hermans et al.; reference ``TripletLoss``).

    Anchors without a negative in the batch (a single pseudo identity) contribute nothing.
    """
    d_ap, d_an, _, _ = batch_hard(pairwise_euclidean(features), targets)
    valid = torch.isfinite(d_an)
    if not valid.any():
        return features.sum() * 0.0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


def soft_cross_entropy(logits, teacher_logits):
    """Cross-entropy against the teacher's softmax (IIDS ``SoftEntropy``); teacher is detached."""
    return -(F.softmax(teacher_logits.detach(), 1) * F.log_softmax(logits, 1)).sum(1).mean()


def soft_triplet_loss(features, teacher_features, targets):
    """IIDS ``SoftTripletLoss`` (margin None): the (ap, an) softmax of the student's batch-hard
    pair is trained towards the teacher's distances of the same pair."""
    dist = pairwise_euclidean(features)
    d_ap, d_an, i_ap, i_an = batch_hard(dist, targets)
    valid = torch.isfinite(d_an)
    if not valid.any():
        return features.sum() * 0.0
    with torch.no_grad():
        ref = pairwise_euclidean(teacher_features.detach())
        rows = torch.arange(len(targets), device=features.device)
        ref_pair = torch.stack([ref[rows, i_ap], ref[rows, i_an]], 1)[valid]
    log_p = F.log_softmax(torch.stack([d_ap, d_an], 1)[valid], 1)
    return -(F.softmax(ref_pair, 1) * log_p).sum(1).mean()
