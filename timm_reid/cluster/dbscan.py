"""DBSCAN on the k-reciprocal Jaccard distance through a sparse neighbourhood graph (ICE, SpCL).

The Jaccard distance is ``rerank(..., lambda_value=0)``; only entries ``<= eps`` are kept, as a
scipy CSR graph that scikit-learn's ``DBSCAN(metric="precomputed")`` accepts. For ``eps < 1`` (every
practical value) the entries come from :func:`~timm_reid.cluster.reranking.jaccard_within`: only
pairs that share support in the sparse encoding can lie within ``eps``, so no (rows x N) block is
made and the N x N x D cosine product runs once (for the k-nearest-neighbour lists: an exact
torch top-k on the features' device, a GPU when the features are on one). Memory: O(N * k) for
the neighbour sets, the encoding and the kept entries, instead of the dense N x N matrix (4.3 GB
at MSMT17 size). ``eps >= 1`` keeps every pair and goes through dense row blocks.

Entries of distance exactly 0 are stored explicitly (scikit-learn reads stored entries, zeros
included, as neighbours), and points isolated even from themselves are labelled as on the dense
matrix (see :func:`_as_on_the_dense_matrix`), so the partition equals DBSCAN on the dense matrix.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ._checks import as_float_matrix, check_positive_int
from .reranking import jaccard_within, rerank_blocks

log = logging.getLogger("timm_reid.cluster")


def _dense_entries(features, eps, k1, k2, chunk_size):
    for start, _, block in rerank_blocks(features=features, k1=k1, k2=k2, lambda_value=0.0,
                                         chunk_size=chunk_size):
        r, c = torch.nonzero(block <= eps, as_tuple=True)
        yield r + start, c, block[r, c]


def jaccard_graph(features, *, eps: float, k1: int = 30, k2: int = 6, chunk_size: int | None = None):
    """``scipy.sparse.csr_matrix`` (N, N) of the k-reciprocal Jaccard distances ``<= eps`` of the
    L2-normalised rows of ``features`` (cosine distance; the diagonal is stored, 0, except for a
    point with an empty k-reciprocal set, whose self-distance is 1)."""
    from scipy import sparse

    features = as_float_matrix(features, "features")
    n = features.shape[0]
    if eps < 1:
        entries = jaccard_within(features, max_distance=eps, k1=k1, k2=k2, chunk_size=chunk_size)
    else:
        entries = _dense_entries(features, eps, k1, k2, chunk_size)
    log.info("jaccard_graph: %d samples, exact top-k neighbours on %s, %s Jaccard entries <= %g",
             n, features.device, "sparse" if eps < 1 else "dense-block", eps)
    rows, cols, vals = [], [], []
    for r, c, v in entries:
        rows.append(r.cpu().numpy().astype(np.int64))
        cols.append(c.cpu().numpy().astype(np.int64))
        vals.append(v.cpu().numpy().astype(np.float64))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    graph = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    graph.sort_indices()
    return graph


def dbscan_jaccard(features, *, eps: float = 0.55, min_samples: int = 4, k1: int = 30, k2: int = 6,
                   chunk_size: int | None = None) -> np.ndarray:
    """DBSCAN labels (``-1`` for outliers) on the k-reciprocal Jaccard distance of ``features``
    (ICE/SpCL defaults: eps 0.55, min_samples 4, k1 30, k2 6), via :func:`jaccard_graph`."""
    from sklearn.cluster import DBSCAN

    check_positive_int(min_samples, "min_samples")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    graph = jaccard_graph(features, eps=eps, k1=k1, k2=k2, chunk_size=chunk_size)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(graph)
    return _as_on_the_dense_matrix(labels, graph)


def _as_on_the_dense_matrix(labels: np.ndarray, graph) -> np.ndarray:
    """The labels DBSCAN gives on the dense matrix, from those it gave on the sparse graph.

    scikit-learn makes every point its own neighbour in a sparse precomputed graph; on the dense
    matrix a point whose self-distance exceeds eps (an empty k-reciprocal set, e.g. among exact
    duplicates: Jaccard 1 to everything) has no neighbour at all. Such a point is isolated, so
    only it differs: with ``min_samples=1`` it formed a cluster of its own, which is dropped
    here (label -1) and the later clusters renumbered, as the dense run numbers them.
    """
    coo = graph.tocoo()
    has_self = np.zeros(graph.shape[0], dtype=bool)
    has_self[coo.row[coo.row == coo.col]] = True
    if has_self.all():
        return labels
    labels = labels.copy()
    labels[~has_self] = -1
    kept = np.unique(labels[labels >= 0])
    renumber = np.full(int(labels.max(initial=-1)) + 2, -1)
    renumber[kept] = np.arange(kept.size)
    return renumber[labels]
