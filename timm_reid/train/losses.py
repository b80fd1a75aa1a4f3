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


# ------------------------------------------------------------------------------------------ ICE
# All inputs are L2-normalised features; similarities are dot products.

def proxy_agnostic_loss(features, centers, targets, *, tau, label_smoothing=0.1):
    """ICE camera-agnostic proxy loss: label-smoothed cross-entropy of ``features @ centers.T / tau``
    (``centers``: (K, D) cluster proxies, ``targets`` in ``[0, K)``)."""
    return F.cross_entropy(features @ centers.t() / tau, targets, label_smoothing=label_smoothing)


def proxy_cross_camera_loss(features, targets, camids, proxies, proxy_labels, *, tau, num_negatives):
    """ICE camera-aware proxy loss (reference ``loss_cam``, without its 0.5 weight).

    For each sample, the positives are all camera proxies of its cluster (one per camera that saw
    it), the negatives the ``num_negatives`` most similar camera proxies of other clusters; the
    loss is the cross-entropy of ``cos / tau`` over (positives, negatives) against a target
    spread uniformly over the positives. Averaged over the samples of each camera of the batch
    and summed over those cameras, as the reference does.
    """
    logits = features @ proxies.t() / tau
    positive = targets[:, None] == proxy_labels[None, :]
    # The hardest negatives: the most similar proxies of other clusters.
    neg_logits = logits.detach().masked_fill(positive, float("-inf"))
    # Rows with fewer negatives than k also select positives here, which are kept anyway.
    k = min(num_negatives, int((~positive).sum(1).max()))
    neg_index = neg_logits.topk(k, dim=1).indices
    keep = positive.clone()
    keep.scatter_(1, neg_index, True)
    log_p = torch.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=1)
    per_sample = -(log_p.masked_fill(~positive, 0.0).sum(1)) / positive.sum(1).clamp(min=1)
    loss = features.new_zeros(())
    for c in torch.unique(camids):
        loss = loss + per_sample[camids == c].mean()
    return loss


def hard_instance_loss(online, momentum, targets, *, tau):
    """ICE hard instance contrast (reference ``ViewContrastiveLoss``): for each online feature, the
    least similar momentum feature of its identity in the batch (itself included) against all the
    momentum features of other identities, cross-entropy of ``sim / tau``."""
    sim = online @ momentum.t()
    same = targets[:, None] == targets[None, :]
    hard_pos = sim.masked_fill(~same, float("inf")).min(1).values
    neg = sim.masked_fill(same, float("-inf"))
    logits = torch.cat([hard_pos[:, None], neg], 1) / tau
    return -(torch.log_softmax(logits, 1)[:, 0]).mean()


def soft_consistency_loss(online, momentum, momentum_weak, *, tau):
    """ICE soft instance consistency (reference ``loss_kl``, without its weight 10):
    ``KL(p_weak || p)`` averaged over the batch, where ``p_weak`` is the softmax over the batch of
    ``momentum_weak @ momentum_weak.T / tau`` (momentum encoder, un-augmented images) and ``p`` that
    of ``online @ momentum.T / tau`` (online encoder on the augmented images against the momentum
    encoder on the second augmented view)."""
    log_p = torch.log_softmax(online @ momentum.t() / tau, 1)
    target = torch.softmax(momentum_weak @ momentum_weak.t() / tau, 1).detach()
    return F.kl_div(log_p, target, reduction="batchmean")
