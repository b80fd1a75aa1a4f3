"""The sparse ICE clustering path (jaccard_within / jaccard_graph / dbscan_jaccard) against the
dense Jaccard matrix of `rerank` and scikit-learn's DBSCAN on it: same entries, same partition."""

import logging

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.cluster import DBSCAN

from timm_reid.cluster import dbscan_jaccard, jaccard_graph, rerank
from timm_reid.cluster.reranking import jaccard_within


def planted(seed, n, dim, identities, duplicates, spread):
    """Features around `identities` centres; `duplicates` rows repeat earlier rows exactly (ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    feats = centres[rng.integers(0, identities, n)] + spread * rng.normal(size=(n, dim))
    if duplicates:
        feats[-duplicates:] = feats[rng.integers(0, n - duplicates, duplicates)]
    return feats.astype(np.float32)


cases = st.fixed_dictionaries({
    "seed": st.integers(0, 10_000),
    "n": st.integers(12, 90),
    "dim": st.sampled_from([3, 8, 32]),
    "identities": st.integers(1, 12),
    "duplicates": st.integers(0, 8),
    "spread": st.sampled_from([0.05, 0.3, 1.0]),
    "eps": st.sampled_from([0.2, 0.45, 0.55, 0.7, 0.95]),
    "k1": st.integers(2, 10),
    "k2": st.integers(1, 6),
    "min_samples": st.integers(1, 5),
})


@settings(max_examples=60, deadline=None)
@given(case=cases)
# Seven exact duplicates of one point leave some point without a k-reciprocal neighbour: Jaccard 1
# to everything, itself included; with min_samples=1 the dense run calls it noise.
@example(case={"seed": 0, "n": 12, "dim": 3, "identities": 1, "duplicates": 7, "spread": 0.05, "eps": 0.2,
               "k1": 2, "k2": 1, "min_samples": 1})
def test_sparse_path_equals_dense_matrix_and_sklearn(case):
    """Entries equal to the dense matrix's entries <= eps bit for bit; labels equal sklearn's
    DBSCAN on the dense matrix (ties from duplicates, one identity, outliers, clusters of one)."""
    feats = planted(case["seed"], case["n"], case["dim"], case["identities"], case["duplicates"], case["spread"])
    k1, k2, eps = min(case["k1"], case["n"] - 1), case["k2"], case["eps"]
    dense = rerank(features=feats, k1=k1, k2=k2, lambda_value=0.0)
    graph = jaccard_graph(feats, eps=eps, k1=k1, k2=k2).tocoo()
    want_rows, want_cols = np.nonzero(dense.numpy() <= eps)
    order = np.lexsort((graph.col, graph.row))
    np.testing.assert_array_equal(graph.row[order], want_rows)
    np.testing.assert_array_equal(graph.col[order], want_cols)
    np.testing.assert_array_equal(graph.data[order], dense.numpy()[want_rows, want_cols].astype(np.float64))
    want = DBSCAN(eps=eps, min_samples=case["min_samples"], metric="precomputed").fit_predict(dense.numpy().astype(np.float64))
    got = dbscan_jaccard(feats, eps=eps, min_samples=case["min_samples"], k1=k1, k2=k2)
    np.testing.assert_array_equal(got, want)


def test_chunked_runs_give_the_same_entries():
    """Small scatter runs (many row chunks) and small scan blocks change nothing."""
    from timm_reid.cluster import _sparse

    feats = torch.from_numpy(planted(3, 300, 16, 20, 5, 0.3))
    whole = jaccard_graph(feats, eps=0.5, k1=10, k2=4)
    saved = _sparse._MAX_SCATTER_ELEMENTS
    try:
        _sparse._MAX_SCATTER_ELEMENTS = 1000
        chunked = jaccard_graph(feats, eps=0.5, k1=10, k2=4)
    finally:
        _sparse._MAX_SCATTER_ELEMENTS = saved
    assert whole.nnz > 300 and (whole != chunked).nnz == 0


def test_eps_of_one_or_more_keeps_every_pair_through_dense_blocks():
    feats = planted(4, 40, 8, 4, 0, 0.3)
    graph = jaccard_graph(feats, eps=1.0, k1=6, k2=3)
    assert graph.nnz == 40 * 40


def test_max_distance_outside_open_unit_interval_is_an_error():
    with pytest.raises(ValueError, match="max_distance must lie in"):
        next(jaccard_within(np.eye(5, dtype=np.float32), max_distance=1.0, k1=2, k2=1))


def test_log_line_names_the_path(caplog):
    with caplog.at_level(logging.INFO, logger="timm_reid.cluster"):
        dbscan_jaccard(planted(5, 30, 8, 3, 0, 0.3), eps=0.5, k1=5, k2=2)
    assert any("exact top-k neighbours on cpu" in r.message and "sparse" in r.message for r in caplog.records)
