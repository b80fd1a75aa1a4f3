"""Clustering settings found from the unlabeled data: DBSCAN eps (ICE) and cluster counts (IICS).

Both rules look only at the distances the clustering itself uses, so they run again at every
clustering and follow the features as training improves them.

**DBSCAN eps** (:func:`dbscan_auto`): a point is a DBSCAN core point exactly when its
``(min_samples - 1)``-th nearest other point lies within eps, and a point is an outlier when it
is neither a core point nor within eps of one. The outlier share therefore falls monotonically
as eps grows, while the cluster count first rises (groups form) and then falls (groups chain
together). The candidates are quantiles of the ``(min_samples - 1)``-th nearest-neighbour
Jaccard distances; among those whose outlier share is at most ``max_outlier_share`` and that
give at least ``min_clusters`` clusters, the rule takes the fewest outliers among those with at
least 0.9 x the largest cluster count (the most clusters alone splits true clusters into their
dense cores, with many outliers around them; the fewest outliers alone chains clusters together).
When no candidate reaches the share it takes the one with the fewest outliers; when none gives
``min_clusters`` clusters it raises.
One pass over the k-reciprocal Jaccard distances (:func:`~timm_reid.cluster.rerank_blocks`)
keeps the entries below the largest candidate as a sparse graph; each candidate is one DBSCAN
on it (the partition equals :func:`~timm_reid.cluster.dbscan_jaccard` at the chosen eps).

**Cluster count** (:func:`estimate_num_clusters`): average linkage on the re-ranked cosine
distance. When the merge heights show a real gap (the largest gap between consecutive heights is
at least 0.1 of their range; searched among counts that leave 1.5 to 30 images per cluster) the
cut falls in it: the last merge inside a cluster and the first across clusters. Without one (on
random-init features the largest gap is under 0.05 of the range on every suite configuration,
above 0.12 on planted clusters) the cut is at a quantile of the nearest-neighbour distances: 0.9
per camera, 0.995 over all cameras, the quantiles whose counts came closest to the planted
identity counts on the suite's initial features (benchmarks/results/suite/estimators.md). The
counts are re-estimated at every round, as training separates the identities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_float_matrix, check_no_nan, check_positive_int
from .agglomerative import condensed_upper_triangle
from .reranking import rerank, rerank_blocks

# Defaults chosen on the suite (benchmarks/results/suite/README.md), never on a test split.
MAX_OUTLIER_SHARE = 0.3
MIN_SIZE, MAX_SIZE = 1.5, 30.0  # average images per cluster the gap count may imply
SEPARATED = 0.1  # a gap of this share of the merge-height range: separated clusters
INTRA_QUANTILE, INTER_QUANTILE = 0.9, 0.995  # nearest-neighbour quantiles without such a gap
_EPS_QUANTILES = np.round(np.arange(0.02, 1.001, 0.02), 2)  # 1: every point a core point
NEAR_MOST = 0.9
_GRAPH_CAP = 0.999  # Jaccard distance 1: no shared neighbour, never a DBSCAN neighbour here


@dataclass(frozen=True)
class EpsChoice:
    """What :func:`dbscan_auto` chose, and what the chosen partition looks like."""

    eps: float
    min_samples: int
    clusters: int
    outlier_share: float
    largest: int
    reason: str

    def describe(self) -> str:
        return (f"eps {self.eps:.4f} (auto, {self.reason}), min samples {self.min_samples}: "
                f"{self.clusters} clusters, {100 * self.outlier_share:.1f} % outliers, largest {self.largest}")


def _checked_unit_features(features, name="features") -> torch.Tensor:
    feats = as_float_matrix(features, name)
    check_no_nan(feats, name)
    return torch.nn.functional.normalize(feats.float(), dim=1)


def _jaccard_neighbours(feats, *, k: int, k1: int, k2: int, cap: float):
    """Distances to the ``k`` nearest other points (N, k) and the CSR graph of entries <= cap."""
    from scipy import sparse

    n = feats.shape[0]
    knn, rows, cols, vals = [], [], [], []
    for start, stop, block in rerank_blocks(features=feats, k1=k1, k2=k2, lambda_value=0.0):
        idx = torch.arange(start, stop)
        others = block.clone()
        others[idx - start, idx] = float("inf")
        knn.append(torch.topk(others, k, dim=1, largest=False).values)
        r, c = torch.nonzero(block <= cap, as_tuple=True)
        rows.append((r + start).numpy())
        cols.append(c.numpy())
        vals.append(block[r, c].double().numpy())
    graph = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    graph.sort_indices()
    return torch.cat(knn).numpy(), graph


def _dbscan(graph, eps, min_samples):
    from scipy import sparse
    from sklearn.cluster import DBSCAN

    coo = graph.tocoo()
    keep = coo.data <= eps
    sub = sparse.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=graph.shape)
    sub.sort_indices()
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(sub)


def _summary(labels):
    clustered = labels[labels >= 0]
    sizes = np.bincount(clustered) if clustered.size else np.zeros(0, int)
    return int(sizes.size), float((labels < 0).mean()), int(sizes.max()) if sizes.size else 0


def _fewest_outliers_near_most_clusters(tried):
    """Among candidates with at least ``NEAR_MOST`` x the largest cluster count: the fewest
    outliers, then the most clusters, then the smallest eps."""
    floor = NEAR_MOST * max(t[2] for t in tried)
    return min((t for t in tried if t[2] >= floor), key=lambda t: (t[3], -t[2], t[0]))


RULES = ("fewest-outliers-near-most", "most-clusters")


def dbscan_auto(features, *, min_samples: int = 4, k1: int = 30, k2: int = 6,
                max_outlier_share: float = MAX_OUTLIER_SHARE, min_clusters: int = 1,
                rule: str = RULES[0]):
    """DBSCAN on the k-reciprocal Jaccard distance with eps found from the data (module docstring).

    ``rule``: how a candidate is chosen among those within the outlier share; the default (module
    docstring) or ``"most-clusters"`` (the most clusters, then the fewest outliers: an earlier
    candidate, kept for the record of the suite). Returns ``(labels, EpsChoice)``; labels ``-1``
    are outliers. Raises ``ValueError`` with the
    cause and the fix when the data cannot be clustered (fewer than ``min_samples + 1`` images,
    or no eps giving ``min_clusters`` clusters).
    """
    check_positive_int(min_samples, "min_samples")
    check_positive_int(min_clusters, "min_clusters")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not 0 <= max_outlier_share < 1:
        raise ValueError(f"max_outlier_share must lie in [0, 1), got {max_outlier_share}")
    feats = as_float_matrix(features, "features")
    check_no_nan(feats, "features")
    feats = feats.float()  # re-ranking normalises the rows itself (as dbscan_jaccard: same partition)
    n = feats.shape[0]
    if n < max(min_samples + 1, 3):
        raise ValueError(f"automatic eps needs more than min_samples={min_samples} images (and at least 3), "
                         f"got {n}: cluster more images or lower min samples")
    k = max(min_samples - 1, 1)
    knn, graph = _jaccard_neighbours(feats, k=k, k1=min(k1, n - 1), k2=min(k2, n), cap=_GRAPH_CAP)
    kth = knn[:, k - 1]
    candidates = np.unique(np.quantile(kth[kth <= _GRAPH_CAP], _EPS_QUANTILES)) if (kth <= _GRAPH_CAP).any() else []
    # float32 values: the distances are float32, so a candidate compares alike everywhere
    candidates = [float(np.float32(e)) for e in candidates if e > 0] or [float(np.float32(_GRAPH_CAP))]
    tried = [(eps, labels, *_summary(labels)) for eps in candidates
             for labels in [_dbscan(graph, eps, min_samples)]]
    usable = [t for t in tried if t[2] >= min_clusters]
    if not usable:
        raise ValueError(f"no eps gives {min_clusters} DBSCAN clusters on these {n} images (at most "
                         f"{max(t[2] for t in tried)}): the features do not separate into groups of "
                         f"{min_samples}; lower min samples, or the batch's identity count")
    within = [t for t in usable if t[3] <= max_outlier_share]
    if within:
        if rule == "most-clusters":
            eps, labels, clusters, share, largest = max(within, key=lambda t: (t[2], -t[3]))
            reason = "most clusters within the outlier share"
        else:
            eps, labels, clusters, share, largest = _fewest_outliers_near_most_clusters(within)
            reason = "fewest outliers near the most clusters"
    else:  # no candidate reaches the share: the fewest outliers
        eps, labels, clusters, share, largest = min(usable, key=lambda t: (t[3], -t[2]))
        reason = "fewest outliers (share not reached)"
    return labels, EpsChoice(eps=eps, min_samples=min_samples, clusters=clusters, outlier_share=share,
                             largest=largest, reason=reason)


def largest_gap_count(heights: np.ndarray, *, lo: int, hi: int) -> tuple[int, float]:
    """Cluster count at the largest gap between consecutive merge heights (ascending, n - 1 of
    them), among the counts ``lo..hi``, and that gap: cutting after ``j`` merges leaves ``n - j``."""
    n = len(heights) + 1
    lo, hi = max(1, lo), min(n, hi)
    if n == 1 or lo >= hi:
        return min(max(lo, 1), n), 0.0
    gaps = np.diff(np.concatenate([[0.0], heights, [heights[-1]]]))  # gaps[j]: before merge j
    # j merges applied -> n - j clusters; the gap before merge j separates counts n-j+1 / n-j
    js = np.arange(n - hi, n - lo + 1)
    best = js[np.argmax(gaps[js])]
    return int(n - best), float(gaps[best])


def estimate_num_clusters(features, *, quantile: float = INTER_QUANTILE, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3, rerank_distances: bool = True, min_size: float = MIN_SIZE,
                          max_size: float = MAX_SIZE) -> int:
    """Cluster count of ``features`` (module docstring): average linkage on the (re-ranked) cosine
    distance; cut at the largest gap between merge heights when it is a real gap (at least
    ``SEPARATED`` x the range of the heights; searched among the counts that leave ``min_size`` to
    ``max_size`` images per cluster on average), else at the ``quantile`` of the nearest-neighbour
    distances. One image: 1 cluster."""
    from scipy.cluster.hierarchy import linkage

    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile}")
    unit = _checked_unit_features(features)
    n = unit.shape[0]
    if n == 0:
        raise ValueError("estimate_num_clusters needs at least one image, got 0")
    if n == 1:
        return 1
    if rerank_distances:
        dist = rerank(features=unit, k1=min(k1, n - 1), k2=min(k2, n), lambda_value=lambda_value)
    else:
        dist = 1.0 - unit @ unit.t()
    dist = torch.maximum(dist, dist.t())  # re-ranking is not exactly symmetric
    dist.fill_diagonal_(0.0)
    heights = np.sort(linkage(condensed_upper_triangle(dist), "average")[:, 2])
    count, gap = largest_gap_count(heights, lo=int(np.ceil(n / max_size)), hi=max(1, int(n // min_size)))
    if gap >= SEPARATED * (heights[-1] - heights[0]) and gap > 0:
        return count
    nearest = (dist + torch.eye(n, dtype=dist.dtype) * (float(dist.max()) + 1)).min(1).values
    threshold = float(torch.quantile(nearest.double(), quantile))
    return int(n - np.count_nonzero(heights <= threshold))


def estimate_camera_cluster_counts(features, camids, *, quantile: float = INTRA_QUANTILE, **kw) -> dict[int, int]:
    """:func:`estimate_num_clusters` of each camera's images: ``{camera id: count}``."""
    unit = _checked_unit_features(features)
    camids = np.asarray(camids)
    if camids.shape != (unit.shape[0],):
        raise ValueError(f"camids must hold one camera id per image: {camids.shape} for {unit.shape[0]} images")
    return {int(c): estimate_num_clusters(unit[torch.from_numpy(camids == c)], quantile=quantile, **kw)
            for c in np.unique(camids)}
