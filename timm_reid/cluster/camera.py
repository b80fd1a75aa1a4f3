"""The two IICS pseudo-labelling steps: clustering within each camera, then across cameras.

Intra-camera (stage 1): per camera, cosine distances of the L2-normalised features, k-reciprocal
re-ranking, average-linkage clustering into `n_clusters` (or by the IIDS quantile threshold).
Labels are made global by offsetting each camera's labels by the cluster counts of the cameras
before it (cameras in ascending id order), so camera c's head sees `label - offset[c]`.

Inter-camera (stage 2): the cross-camera distance `1 - cos - mu * J * [cam_i != cam_j]`,
re-ranking, average-linkage clustering of all images. On CPU the three steps share one float32
condensed vector (the strict upper triangle, N (N - 1) / 2 entries: 2.1 GB at MSMT17 size): the
distance is written into it block by block, re-ranked in place (`rerank_condensed_`, blocks from
the last to the first) and clustered in place (`agglomerative(..., overwrite=True)`), so no N x N
matrix and no float64 copy exist. CUDA features keep the dense distance and re-ranking on the GPU
(the fused Jaccard kernel) and hand the float32 upper triangle to the same in-place linkage.

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
from .cross_camera import cross_camera_condensed, cross_camera_distance
from .reranking import rerank as rerank_distances
from .reranking import rerank_condensed_


# Entries per block of rows on the condensed path. Smaller than the dense path's 16 M: the block
# temporaries (distance, Jaccard, re-ranking rows and their gathers) add to the condensed vector
# instead of hiding under an N x N matrix; measured at N = 8,000, 4 M entries keep them below
# ~300 MB (16 M: ~500 MB) at the same speed.
_CONDENSED_BLOCK_ELEMENTS = 1 << 22


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


def _cluster(dist, n, *, n_clusters, threshold_quantile, drop_singletons,
             overwrite: bool = False) -> np.ndarray:
    """Labels from a square matrix, or (n > 1) from its condensed upper triangle (destroyed
    when `overwrite`)."""
    if n == 1:
        return np.full(1, -1 if drop_singletons else 0, dtype=np.int64)
    target = {"n_clusters": n_clusters} if threshold_quantile is None else {
        "threshold": quantile_threshold(dist, threshold_quantile)}
    return agglomerative(dist, **target, drop_singletons=drop_singletons, overwrite=overwrite)


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
    # Validated here, normalised inside the distance functions only: a normalised copy kept for
    # the whole step would be N x D more floats next to the condensed vector (0.27 GB at MSMT17
    # size with 2048-d features).
    feats = as_float_matrix(features, "features")
    check_no_nan(feats, "features")
    n = feats.shape[0]
    n_clusters = _clustering_target(n_clusters, threshold_quantile, default_count=800)
    if n_clusters is not None and n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of images N={n}")
    if n == 1:
        cross_camera_distance(feats, scores, camids, mu, topk=jaccard_topk)  # validates the inputs
        return torch.from_numpy(_cluster(None, 1, n_clusters=n_clusters, threshold_quantile=None,
                                         drop_singletons=drop_singletons))
    reranking = {"k1": min(k1, n - 1), "k2": min(k2, n), "lambda_value": lambda_value}
    if feats.is_cuda:
        condensed = _dense_condensed(feats, scores, camids, mu, jaccard_topk, rerank, reranking)
    else:
        rows = max(1, _CONDENSED_BLOCK_ELEMENTS // n)
        condensed, diagonal = cross_camera_condensed(feats, scores, camids, mu, topk=jaccard_topk,
                                                     chunk_size=rows)
        if rerank:
            rerank_condensed_(condensed, diagonal, **reranking, chunk_size=rows)
    labels = _cluster(condensed, n, n_clusters=n_clusters, threshold_quantile=threshold_quantile,
                      drop_singletons=drop_singletons, overwrite=True)
    return torch.from_numpy(labels)


def _dense_condensed(feats, scores, camids, mu, jaccard_topk, rerank, reranking) -> np.ndarray:
    """The GPU route: the N x N matrix on the device (fused Jaccard kernel), re-ranked in place,
    then its upper triangle as float32 on the host."""
    dist = cross_camera_distance(feats, scores, camids, mu, topk=jaccard_topk)
    if rerank:
        rerank_distances(dist, **reranking, overwrite=True)
    return condensed_upper_triangle(dist, dtype=np.float32)
