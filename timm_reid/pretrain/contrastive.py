"""ISR's building blocks (Dou et al., ICCV 2023): frame matching, the reliability-guided
contrastive loss, the memory queue and its loss. Plain functions on feature tensors.

- :func:`match_frames`: positive pairs of two crop sets of one video = the maximum-weight
  bipartite matching on cosine similarity (Eq. 1; Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment``), ``min(m, n)`` pairs.
- :func:`reliability_loss`: ``p_i`` = softmax probability of the matched partner among all
  candidates (Eq. 2), ``L_i = -sg(p_i)^gamma log p_i`` (Eq. 3, gradient of the weight stopped),
  scaled by ``alpha = sg(sum -log p) / sg(sum L_i)`` (Eq. 4) so the loss keeps its size.
- :class:`FeatureQueue` and :func:`queue_loss`: a FIFO of past features with their video; each
  anchor's ``k`` hardest negatives among the entries of other videos, ``mean log(1 + exp(x . f))``
  (Eq. 5). The paper's text says "most dissimilar" but also "hard negatives"; the highest
  similarities are the hard ones, and those are used here.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["match_frames", "max_weight_matching", "reliability_loss", "FeatureQueue", "queue_loss"]


def match_frames(x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` and columns of ``y`` matched so that the summed cosine similarity of the
    ``min(len(x), len(y))`` pairs is largest. ``x``, ``y``: (m, d), (n, d) features (any norm)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"match_frames needs (m, d) and (n, d) features, got {tuple(x.shape)} and {tuple(y.shape)}")
    sim = F.normalize(x.detach().float(), dim=1) @ F.normalize(y.detach().float(), dim=1).t()
    return max_weight_matching(sim.cpu().numpy())


def max_weight_matching(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a maximum-weight matching of ``min(m, n)`` pairs of an (m, n) matrix."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights must be an (m, n) matrix, got shape {weights.shape}")
    if weights.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if not np.isfinite(weights).all():
        raise ValueError("weights hold NaN or infinite values; the features are not finite")
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def reliability_loss(anchors: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor, *,
                     gamma: float, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reliability-guided contrastive loss (Eqs. 2-4) and the reliabilities ``p`` (detached).

    Args:
        anchors: (m, d) L2-normalised features, one per positive pair.
        candidates: (n, d) L2-normalised features the partner is chosen from (the other frame of
            the "super" frame pair: the partner's video and every other video in it).
        targets: (m,) index of each anchor's matched partner in ``candidates``.
    """
    log_p = F.log_softmax(anchors @ candidates.t() / tau, dim=1).gather(1, targets[:, None]).squeeze(1)
    p = log_p.detach().exp()
    per_anchor = -(p ** gamma) * log_p  # the weight p^gamma is a constant: gradient stopped
    # alpha: the gamma = 0 loss over this one, both without gradient (Eq. 4).
    alpha = (-log_p.detach()).sum() / per_anchor.detach().sum().clamp_min(1e-12)
    return alpha * per_anchor.mean(), p


class FeatureQueue:
    """First-in first-out memory of ``size`` features and the video each came from.

    ``entries()`` returns them oldest first. State is plain tensors (``state_dict``), so a
    resumed run continues with the same queue.
    """

    def __init__(self, size: int, dim: int):
        if size < 1:
            raise ValueError(f"queue size {size} must be >= 1")
        self.features = torch.zeros(size, dim)
        self.videos = torch.full((size,), -1, dtype=torch.long)
        self.count = 0  # features pushed so far; the next write goes to count % size

    def push(self, features: torch.Tensor, videos: torch.Tensor) -> None:
        features, videos = features.detach().to(self.features), torch.as_tensor(videos).long().cpu()
        dropped = max(len(features) - len(self.features), 0)
        if dropped:  # only the newest fit; the older ones count as pushed and overwritten
            features, videos, self.count = features[dropped:], videos[dropped:], self.count + dropped
        slots = (self.count + torch.arange(len(features))) % len(self.features)
        # Out of place: a loss may still hold the previous entries for its backward pass.
        self.features = self.features.index_copy(0, slots, features)
        self.videos = self.videos.index_copy(0, slots, videos)
        self.count += len(features)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = len(self.features)
        if self.count < size:
            return self.features[:self.count], self.videos[:self.count]
        order = (self.count + torch.arange(size)) % size
        return self.features[order], self.videos[order]

    def state_dict(self) -> dict:
        return {"features": self.features.clone(), "videos": self.videos.clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if state["features"].shape != self.features.shape:
            raise ValueError(f"queue of shape {tuple(state['features'].shape)} cannot load into "
                             f"{tuple(self.features.shape)}")
        self.features, self.videos, self.count = state["features"], state["videos"], int(state["count"])


def queue_loss(anchors: torch.Tensor, anchor_videos: torch.Tensor, queue: FeatureQueue, *, k: int) -> torch.Tensor:
    """Mean over anchors of ``mean_j log(1 + exp(x . f_j))`` over its ``k`` most similar queue
    features of other videos (fewer when fewer exist; anchors with none contribute 0)."""
    features, videos = queue.entries()
    if len(features) == 0:
        return anchors.sum() * 0.0
    features, videos = features.to(anchors), videos.to(anchors.device)
    sim = anchors @ features.t()
    other = anchor_videos.to(anchors.device)[:, None] != videos[None, :]
    sim = sim.masked_fill(~other, float("-inf"))
    k = min(k, len(features))
    top = sim.topk(k, dim=1).values
    valid = torch.isfinite(top)
    terms = F.softplus(top.masked_fill(~valid, 0.0)) * valid
    per_anchor = terms.sum(1) / valid.sum(1).clamp_min(1)
    return per_anchor.mean()
