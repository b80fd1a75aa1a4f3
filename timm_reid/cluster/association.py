"""GUR's clustering features and cross-modality labels (Yang, Chen, Ye, ICCV 2023).

- :func:`association_embedding` (cross-memory association embedding, CAE, Eqs. 6-8): each
  sample's softmax association probabilities to the cluster memory of every domain (camera or
  modality), concatenated; GUR clusters these embeddings instead of the features.
- :func:`unify_labels` (cross-modality label unification, CLU, Eqs. 9-13): infrared pseudo
  labels carried to the visible samples by a top-k heterogeneous affinity vote, then smoothed by
  a vote of each visible sample's top-k visible neighbours.

Parity target: the released GUR code. Where it differs from the paper's equations it is
followed and the difference is an option: the smoothing vote of the code weighs the top-k
visible neighbours equally (``homogeneous="uniform"``, default), the paper's Eq. 12 by their
softmax similarity (``homogeneous="softmax"``). Un-clustered infrared samples (label -1) vote
for "outlier", as in the code: a visible sample whose vote they win becomes an outlier (-1).

Both work on blocks of rows, so memory is O(block x other side), never visible x infrared.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import as_float_matrix, as_labels, check_no_nan, check_positive_int

__all__ = ["association_embedding", "unify_labels"]

_BLOCK_ELEMENTS = 1 << 22
HOMOGENEOUS_VOTES = ("uniform", "softmax")


def _normalized(features, name: str, device=None) -> torch.Tensor:
    matrix = as_float_matrix(features, name, device=device)
    check_no_nan(matrix, name)
    # float64 stays float64 (exact comparisons in tests); half precision is computed in float32
    return F.normalize(matrix if matrix.dtype == torch.float64 else matrix.float(), dim=1)


def _row_blocks(rows: int, cols: int):
    step = max(1, _BLOCK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def association_embedding(features, memories: Sequence, *, sigma: float = 0.05) -> torch.Tensor:
    """``E(q) = [softmax(q . M_1 / sigma), ..., softmax(q . M_N / sigma)]`` for every row ``q``.

    Args:
        features: (N, D) sample features; L2-normalised here, as the memories' rows.
        memories: the N domain memories, each (C_n, D) cluster centroids (e.g. one memory per
            camera after intra-camera training, one per modality after inter-camera training).
        sigma: temperature (GUR: 0.05, the code's factor 20).

    Returns:
        (N, sum C_n) tensor (float32, float64 for float64 features) on the features' device;
        each memory's block sums to 1.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (GUR uses 0.05), got {sigma!r}")
    if len(memories) == 0:
        raise ValueError("association_embedding needs at least one memory (C_n x D cluster centroids)")
    q = _normalized(features, "features")
    banks = [_normalized(m, f"memories[{i}]", device=q.device).to(q.dtype) for i, m in enumerate(memories)]
    for i, bank in enumerate(banks):
        if bank.shape[1] != q.shape[1] or bank.shape[0] == 0:
            raise ValueError(f"memories[{i}] has shape {tuple(bank.shape)}; it needs at least one "
                             f"row of the features' dimension {q.shape[1]}")
    return torch.cat([torch.softmax(q @ bank.t() / sigma, dim=1) for bank in banks], dim=1)


def _vote(label_of_neighbour: torch.Tensor, weights: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class with the largest summed weight per row (first on ties); class 0 is "outlier"."""
    votes = torch.zeros(weights.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, label_of_neighbour, weights)
    return votes.argmax(1)


def unify_labels(visible_features, infrared_features, infrared_labels, *, k: int = 20,
                 smooth: bool = True, homogeneous: str = "uniform") -> np.ndarray:
    """Visible pseudo labels in the infrared label space (GUR's CLU; module docstring).

    1. Heterogeneous transfer (Eqs. 10-11): ``P = softmax_rows(cos(visible, infrared))``, each
       row's ``k`` largest entries kept; a visible sample takes the infrared label (or outlier)
       with the largest sum of kept ``P``.
    2. Homogeneous smoothing (Eqs. 12-13, when ``smooth``): each visible sample takes the label
       most frequent among its ``k`` most similar visible samples (itself included), each vote
       weighted 1 (``"uniform"``, the code) or by its softmax similarity (``"softmax"``, Eq. 12).

    Args:
        visible_features: (M, D); infrared_features: (N, D) (cosine similarity, any scale).
        infrared_labels: (N,) ints, ``-1`` = un-clustered.
        k: neighbours kept in each vote (GUR: 20); clipped to the available samples.

    Returns:
        (M,) int64 NumPy labels: infrared cluster ids, ``-1`` for outliers.
    """
    check_positive_int(k, "k")
    if homogeneous not in HOMOGENEOUS_VOTES:
        raise ValueError(f"homogeneous must be one of {HOMOGENEOUS_VOTES}, got {homogeneous!r}")
    visible = _normalized(visible_features, "visible_features")
    infrared = _normalized(infrared_features, "infrared_features", device=visible.device).to(visible.dtype)
    if visible.shape[1] != infrared.shape[1]:
        raise ValueError(f"visible_features have dimension {visible.shape[1]} but infrared_features "
                         f"{infrared.shape[1]}; extract both with the same model")
    labels = as_labels(infrared_labels, "infrared_labels", length=infrared.shape[0], device=visible.device)
    if bool((labels < -1).any()):
        raise ValueError("infrared_labels must be cluster ids >= 0 or -1 (un-clustered)")
    num_classes = int(labels.max()) + 2            # column 0 = outlier, c + 1 = cluster c
    shifted = labels + 1
    transferred = torch.empty(visible.shape[0], dtype=torch.long, device=visible.device)
    k_heter = min(k, infrared.shape[0])
    for start, stop in _row_blocks(visible.shape[0], infrared.shape[0]):
        affinity = torch.softmax(visible[start:stop] @ infrared.t(), dim=1)
        weights, neighbours = affinity.topk(k_heter, dim=1)
        transferred[start:stop] = _vote(shifted[neighbours], weights, num_classes)
    if smooth:
        transferred = _smooth(visible, transferred, min(k, visible.shape[0]), homogeneous, num_classes)
    return (transferred - 1).cpu().numpy()


def _smooth(visible, shifted_labels, k, homogeneous, num_classes):
    smoothed = torch.empty_like(shifted_labels)
    for start, stop in _row_blocks(visible.shape[0], visible.shape[0]):
        similarity = visible[start:stop] @ visible.t()
        if homogeneous == "softmax":
            similarity = torch.softmax(similarity, dim=1)
        values, neighbours = similarity.topk(k, dim=1)
        weights = torch.ones_like(values) if homogeneous == "uniform" else values
        smoothed[start:stop] = _vote(shifted_labels[neighbours], weights, num_classes)
    return smoothed
