"""The two IICS pseudo-labelling steps: clustering within each camera, then across cameras.

Intra-camera (stage 1): per camera, cosine distances of the L2-normalised features, k-reciprocal
re-ranking, average-linkage clustering into `n_clusters` (or by the IIDS quantile threshold).
Labels are made global by offsetting each camera's labels by the cluster counts of the cameras
before it (cameras in ascending id order), so camera c's head sees `label - offset[c]`.

Inter-camera (stage 2): the cross-camera distance `1 - cos - mu * J * [cam_i != cam_j]`,
re-ranking, average-linkage clustering of all images.

Small cameras: the reference, on meeting a camera with fewer images than clusters, sets the count
to `n // 2` and keeps that smaller count for every later camera (and duplicates the camera's
images). Here such a camera gets `max(1, n // 2)` clusters and the others keep `n_clusters`;
re-ranking's k1/k2 are clipped to the camera size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import as_float_matrix, as_labels, check_no_nan, check_positive_int
from .agglomerative import agglomerative, condensed_upper_triangle, quantile_threshold
from .cross_camera import cross_camera_distance
from .reranking import rerank as rerank_distances


class IntraCameraClusters(NamedTuple):
    """Global labels (N,) int64 (-1: dropped singleton) and {camera id: cluster count}."""

    labels: torch.Tensor
    counts: dict[int, int]


def _clustering_target(n_clusters, threshold_quantile, default_count: int):
    """The cluster count to use (None in threshold mode); the IICS default when neither is set."""
    if n_clusters is not None and threshold_quantile is not None:
        raise ValueError(
            "pass either n_clusters (cluster count) or threshold_quantile (IIDS rule: quantile "
            f"of the pairwise distances), not both; got n_clusters={n_clusters!r}, "
            f"threshold_quantile={threshold_quantile!r}"
        )
    if threshold_quantile is None:
        return check_positive_int(default_count if n_clusters is None else n_clusters, "n_clusters")
    if not 0.0 <= float(threshold_quantile) <= 1.0:
        raise ValueError(f"threshold_quantile must lie in [0, 1], got {threshold_quantile}")
    return None


def _cluster(dist, n, *, n_clusters, threshold_quantile, drop_singletons) -> np.ndarray:
    """Labels from a square matrix, or (n > 1) from its condensed upper triangle."""
    if n == 1:
        return np.full(1, -1 if drop_singletons else 0, dtype=np.int64)
    if threshold_quantile is None:
        return agglomerative(dist, n_clusters=n_clusters, drop_singletons=drop_singletons)
    threshold = quantile_threshold(dist, threshold_quantile)
    return agglomerative(dist, threshold=threshold, drop_singletons=drop_singletons)


def _camera_distance(unit: torch.Tensor, rerank: bool, k1: int, k2: int, lambda_value: float):
    n = unit.shape[0]
    if rerank and n > 1:
        return rerank_distances(
            features=unit, k1=min(k1, n - 1), k2=min(k2, n), lambda_value=lambda_value
        )
    return 1.0 - unit @ unit.t()


def _checked_features(features) -> torch.Tensor:
    feats = as_float_matrix(features, "features")
    check_no_nan(feats, "features")
    return F.normalize(feats.float(), dim=1)


def cluster_intra_camera(
    features,
    camids,
    *,
    n_clusters: int | None = None,
    threshold_quantile: float | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    rerank: bool = True,
    drop_singletons: bool = False,
) -> IntraCameraClusters:
    """IICS stage-1 pseudo labels: cluster each camera's images separately.

    Args:
        features: (N, D) image features (L2-normalised here).
        camids: (N,) camera ids.
        n_clusters: clusters per camera (default 600, as IICS); a camera with fewer images
            gets `max(1, n // 2)`.
        threshold_quantile: instead of a count, the IIDS rule (e.g. 0.0025): cut at this
            quantile of the camera's pairwise (re-ranked) distances.
        k1, k2, lambda_value, rerank: k-reciprocal re-ranking (`timm_reid.cluster.rerank`).
        drop_singletons: label single-image clusters -1 (IIDS threshold mode).

    Returns:
        `IntraCameraClusters(labels, counts)`: labels (N,) int64 CPU tensor, global over cameras,
        and the cluster count of each camera id (ascending).
    """
    unit = _checked_features(features)
    cams = as_labels(camids, "camids", length=unit.shape[0], device=unit.device)
    n_clusters = _clustering_target(n_clusters, threshold_quantile, default_count=600)
    labels = torch.full((unit.shape[0],), -1, dtype=torch.long)
    counts, offset = {}, 0
    for cam in torch.unique(cams).tolist():
        members = (cams == cam).nonzero().squeeze(1)
        n = members.numel()
        count = None if n_clusters is None else (n_clusters if n >= n_clusters else max(1, n // 2))
        dist = _camera_distance(unit[members], rerank, k1, k2, lambda_value)
        local = _cluster(dist, n, n_clusters=count, threshold_quantile=threshold_quantile,
                         drop_singletons=drop_singletons)
        local = torch.from_numpy(local)
        labels[members.cpu()] = torch.where(local >= 0, local + offset, -1)
        counts[int(cam)] = int(local.max()) + 1  # 0 when every image was a dropped singleton
        offset += counts[int(cam)]
    return IntraCameraClusters(labels, counts)


def cluster_inter_camera(
    features,
    scores,
    camids,
    *,
    mu: float,
    n_clusters: int | None = None,
    threshold_quantile: float | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    rerank: bool = True,
    drop_singletons: bool = False,
    jaccard_topk: int | None = None,
) -> torch.Tensor:
    """IICS stage-2 pseudo labels: cluster all images with the cross-camera distance.

    Args:
        features: (N, D) image features; scores: (N, S) concatenated per-camera softmax scores;
        camids: (N,) camera ids; mu: weight of the cross-camera Jaccard term.
        n_clusters: cluster count (default 800, as IICS), or instead
        threshold_quantile: the IIDS rule (e.g. 0.0017).
        k1, k2, lambda_value, rerank, drop_singletons: as in `cluster_intra_camera`.
        jaccard_topk: use the top-k sparse Jaccard approximation (see `weighted_jaccard`).

    Returns:
        (N,) int64 CPU tensor of labels (-1: dropped singleton).
    """
    unit = _checked_features(features)
    n = unit.shape[0]
    n_clusters = _clustering_target(n_clusters, threshold_quantile, default_count=800)
    if n_clusters is not None and n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of images N={n}")
    dist = cross_camera_distance(unit, scores, camids, mu, topk=jaccard_topk)
    if rerank and n > 1:
        rerank_distances(dist, k1=min(k1, n - 1), k2=min(k2, n), lambda_value=lambda_value,
                         overwrite=True)
    # Peak memory: the N x N float32 matrix, then its float64 upper triangle, never both kept
    # alongside SciPy's working copy.
    condensed = condensed_upper_triangle(dist) if n > 1 else dist
    del dist
    labels = _cluster(condensed, n, n_clusters=n_clusters, threshold_quantile=threshold_quantile,
                      drop_singletons=drop_singletons)
    return torch.from_numpy(labels)
