"""Average-linkage agglomerative clustering of a precomputed distance matrix.

Partitions equal `sklearn.cluster.AgglomerativeClustering(metric="precomputed",
linkage="average")` (which the IICS/IIDS reference uses) without its cost: sklearn holds the
dense float64 matrix, its condensed upper triangle and SciPy's working copy at once; here the
condensed float64 upper triangle is built block by block from the (float32 or float16) input and
handed to SciPy's nearest-neighbour-chain linkage, whose working copy is the only other
quadratic buffer.

In place (`overwrite=True`, a float32 or float64 condensed vector): SciPy's float64 working copy is
avoided too; the vector itself is the working storage of a nearest-neighbour-chain average linkage
written here (`_average_linkage`), so a float32 vector (2.1 GB at MSMT17 size, N = 32,621) is the
only quadratic buffer. On float64 it gives SciPy's merges bit for bit; on float32 the same as
SciPy on those values unless two competing linkage distances lie within float32 rounding.

Semantics kept from sklearn: only the upper triangle of the input is read (a non-symmetric input,
such as a re-ranked matrix, is not symmetrised); a distance threshold merges clusters whose
linkage distance is strictly below it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage

from ._average_linkage import nn_chain_average
from ._checks import as_float_matrix, check_no_nan, check_positive_int
from ._condensed import kth_smallest_float32, num_samples

# Rows of the input copied into the condensed vector per step (bounded temporary memory).
_CONDENSE_ELEMENTS = 1 << 24


def condensed_upper_triangle(dist: torch.Tensor, dtype=np.float64) -> np.ndarray:
    """The strict upper triangle of `dist`, row by row, as `dtype` (SciPy's condensed form)."""
    n = dist.shape[0]
    out = np.empty(n * (n - 1) // 2, dtype=dtype)
    rows_per_step = max(1, _CONDENSE_ELEMENTS // max(n, 1))
    offset = 0
    for start in range(0, n - 1, rows_per_step):
        stop = min(n - 1, start + rows_per_step)
        block = dist[start:stop].cpu()
        check_no_nan(block, "dist", start)
        block = (block.double() if out.dtype == np.float64 else block.float()).numpy()
        for row in range(start, stop):
            length = n - 1 - row
            out[offset:offset + length] = block[row - start, row + 1:]
            offset += length
    return out


def _is_condensed(dist) -> bool:
    return isinstance(dist, np.ndarray) and dist.ndim == 1


def _condensed(dist, *, keep_float32: bool = False) -> np.ndarray:
    """`dist` as SciPy's condensed vector: a square matrix's strict upper triangle, or a 1-D
    condensed vector itself (no copy when it already is float64, or float32 and `keep_float32`)."""
    if _is_condensed(dist):
        num_samples(dist.size)  # raises on a length that is no N (N - 1) / 2
        if not np.issubdtype(dist.dtype, np.floating):
            raise TypeError(f"dist must be floating point, got dtype {dist.dtype}")
        keep = dist.dtype == np.float64 or (keep_float32 and dist.dtype == np.float32)
        condensed = dist if keep else np.asarray(dist, dtype=np.float64)
        _check_no_nan_condensed(condensed)
        return condensed
    return condensed_upper_triangle(as_float_matrix(dist, "dist", square=True))


def _check_no_nan_condensed(condensed: np.ndarray) -> None:
    # In chunks: a whole-vector isnan mask would be another N^2 / 2 bytes at MSMT17 size.
    for start in range(0, condensed.size, _CONDENSE_ELEMENTS):
        if np.isnan(condensed[start:start + _CONDENSE_ELEMENTS]).any():
            raise ValueError("dist contains NaN; check the features before clustering")


def _num_samples(condensed: np.ndarray) -> int:
    return num_samples(condensed.size)


def quantile_threshold(dist, quantile: float) -> float:
    """The IIDS threshold rule: the `quantile`-th smallest upper-triangle distance.

    The reference sorts the strict upper triangle and takes the element at index
    `round(quantile * M)` (M = N (N-1) / 2), after dropping exact zeros - which also drops
    genuine zero distances (duplicate images) and shifts the quantile. Here all M entries count;
    the index is clipped to M - 1 (the reference indexes out of bounds when it rounds to M).
    """
    if not 0.0 <= float(quantile) <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    if not _is_condensed(dist) and len(dist) < 2:
        raise ValueError("quantile_threshold needs at least 2 samples (1 pairwise distance)")
    upper = _condensed(dist, keep_float32=True)
    index = min(upper.size - 1, int(np.round(quantile * upper.size)))
    if upper.dtype == np.float32:
        return kth_smallest_float32(upper, index)  # the same value, without a copy
    # np.partition copies: one more condensed-size buffer, freed on return.
    return float(np.partition(upper, index)[index])


def _cut(merges: np.ndarray, n: int, n_clusters: int) -> np.ndarray:
    """Flat labels after the first `n - n_clusters` merges, numbered by first appearance."""
    parent = np.arange(2 * n - 1)
    applied = merges[: n - n_clusters, :2].astype(np.int64)
    new_nodes = n + np.arange(applied.shape[0])
    parent[applied[:, 0]] = new_nodes
    parent[applied[:, 1]] = new_nodes
    # Pointer jumping: every node reaches its root after O(log depth) rounds.
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    _, first, inverse = np.unique(parent[:n], return_index=True, return_inverse=True)
    order_of_first_appearance = np.argsort(np.argsort(first))
    return order_of_first_appearance[inverse]


def drop_singleton_clusters(labels: np.ndarray) -> np.ndarray:
    """Label -1 for clusters of one sample; the rest renumbered 0..K-1 by first appearance (IIDS)."""
    counts = np.bincount(labels)
    keep = counts[labels] > 1
    out = np.full_like(labels, -1)
    _, inverse = np.unique(labels[keep], return_inverse=True)
    _, first = np.unique(inverse, return_index=True)
    out[keep] = np.argsort(np.argsort(first))[inverse]
    return out


def agglomerative(
    dist,
    *,
    n_clusters: int | None = None,
    threshold: float | None = None,
    drop_singletons: bool = False,
    overwrite: bool = False,
) -> np.ndarray:
    """Average-linkage clustering of an (N, N) distance matrix (torch or NumPy).

    Args:
        dist: (N, N) distances (torch or NumPy; only the strict upper triangle is read), or
            SciPy's condensed 1-D float64 vector of that triangle (then not copied, so the
            caller can free the square matrix first). NaN raises; inf is allowed (merges last).
        n_clusters: stop when this many clusters remain (1 <= n_clusters <= N), or
        threshold: merge while the average-linkage distance is strictly below this value
            (sklearn's `distance_threshold`). Use `quantile_threshold` for the IIDS rule.
        drop_singletons: label clusters of a single sample -1 and renumber the others 0..K-1,
            as IIDS does for its threshold clustering.
        overwrite: with a condensed float32 or float64 vector, use it as the working storage of
            the linkage (its content is destroyed): no copy at all. float64 gives SciPy's merges
            exactly; float32 rounds each updated linkage distance to float32, so merges whose
            competing distances lie within that rounding (about 1e-7 relative) may differ.

    Returns:
        int64 NumPy labels of length N, numbered by first appearance (sample 0 is in cluster 0
        unless dropped). Merges at equal distance follow SciPy's order.
    """
    if (n_clusters is None) == (threshold is None):
        raise ValueError(
            "pass exactly one of n_clusters (cluster count) or threshold (distance cut-off), "
            f"got n_clusters={n_clusters!r}, threshold={threshold!r}"
        )
    if n_clusters is not None:
        check_positive_int(n_clusters, "n_clusters")
    elif np.isnan(float(threshold)):
        raise ValueError("threshold is NaN; pass a finite distance cut-off")
    in_place = overwrite and _is_condensed(dist)
    if overwrite and not (in_place and dist.dtype in (np.float32, np.float64)):
        raise ValueError("overwrite=True needs dist as a 1-D float32 or float64 NumPy condensed "
                         f"vector, got {type(dist).__name__} of shape {getattr(dist, 'shape', None)}"
                         f" and dtype {getattr(dist, 'dtype', None)}")
    condensed = _condensed(dist, keep_float32=in_place) if _is_condensed(dist) else None
    matrix = None if condensed is not None else as_float_matrix(dist, "dist", square=True)
    n = _num_samples(condensed) if condensed is not None else matrix.shape[0]
    if n_clusters is not None and n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of samples N={n}")
    if n == 1:
        check_no_nan(matrix, "dist")
        labels = np.zeros(1, dtype=np.int64)
    else:
        condensed = condensed if condensed is not None else condensed_upper_triangle(matrix)
        labels = _labels(condensed, n, n_clusters, threshold, in_place)
    return drop_singleton_clusters(labels) if drop_singletons else labels


def _labels(condensed: np.ndarray, n: int, n_clusters, threshold, in_place: bool) -> np.ndarray:
    merges = nn_chain_average(condensed, n) if in_place else linkage(condensed, method="average")
    if n_clusters is None:
        # sklearn: n_clusters = 1 + number of merges at or above the threshold.
        n_clusters = 1 + int(np.count_nonzero(merges[:, 2] >= threshold))
    return _cut(merges, n, n_clusters)
