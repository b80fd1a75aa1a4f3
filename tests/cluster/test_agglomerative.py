"""agglomerative(): same partitions as sklearn's average linkage on a precomputed matrix."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from timm_reid.cluster import agglomerative, drop_singleton_clusters, quantile_threshold


def random_distances(seed, n, symmetric=True):
    """Euclidean distances of random points: no ties (almost surely)."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 3))
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    if not symmetric:
        dist = dist * rng.uniform(0.5, 1.5, size=(n, n))
    return dist


def sklearn_labels(dist, **kwargs):
    model = AgglomerativeClustering(metric="precomputed", linkage="average", **kwargs)
    return model.fit_predict(dist)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 80), fraction=st.floats(0, 1),
       symmetric=st.booleans())
def test_cluster_count_partition_equals_sklearn(seed, n, fraction, symmetric):
    dist = random_distances(seed, n, symmetric)
    n_clusters = 1 + int(fraction * (n - 1))
    labels = agglomerative(dist, n_clusters=n_clusters)
    assert adjusted_rand_score(labels, sklearn_labels(dist, n_clusters=n_clusters)) == 1.0
    assert labels.max() + 1 == n_clusters


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(3, 80), quantile=st.floats(0, 1))
def test_threshold_partition_equals_sklearn(seed, n, quantile):
    dist = torch.tensor(random_distances(seed, n), dtype=torch.float32)
    threshold = quantile_threshold(dist, quantile)
    labels = agglomerative(dist, threshold=threshold)
    expected = sklearn_labels(dist.numpy(), n_clusters=None, distance_threshold=threshold)
    assert adjusted_rand_score(labels, expected) == 1.0


def test_quantile_threshold_is_the_sorted_upper_triangle_entry():
    dist = random_distances(0, 30)
    upper = np.sort(dist[np.triu_indices(30, k=1)])
    assert quantile_threshold(dist, 0.1) == upper[round(0.1 * upper.size)]
    assert quantile_threshold(dist, 1.0) == upper[-1]  # clipped, no out-of-range index
    assert quantile_threshold(dist, 0.0) == upper[0]


def test_labels_numbered_by_first_appearance():
    dist = np.array([[0, 9, 1, 9], [9, 0, 9, 1], [1, 9, 0, 9], [9, 1, 9, 0]], dtype=float)
    np.testing.assert_array_equal(agglomerative(dist, n_clusters=2), [0, 1, 0, 1])
    assert agglomerative(dist, n_clusters=2).dtype == np.int64


def test_threshold_merges_strictly_below():
    dist = np.array([[0, 1, 5], [1, 0, 5], [5, 5, 0]], dtype=float)
    np.testing.assert_array_equal(agglomerative(dist, threshold=1.0), [0, 1, 2])
    np.testing.assert_array_equal(agglomerative(dist, threshold=1.0 + 1e-9), [0, 0, 1])


def test_drop_singletons_relabels_consecutively():
    np.testing.assert_array_equal(drop_singleton_clusters(np.array([3, 1, 3, 0, 2, 2])),
                                  [0, -1, 0, -1, 1, 1])
    dist = np.array([[0, 1, 5], [1, 0, 5], [5, 5, 0]], dtype=float)
    np.testing.assert_array_equal(agglomerative(dist, n_clusters=2, drop_singletons=True),
                                  [0, 0, -1])


def test_single_sample():
    np.testing.assert_array_equal(agglomerative(np.zeros((1, 1)), n_clusters=1), [0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dist": np.zeros((3, 3))}, "exactly one"),
        ({"dist": np.zeros((3, 3)), "n_clusters": 2, "threshold": 0.5}, "exactly one"),
        ({"dist": np.zeros((3, 3)), "n_clusters": 4}, "exceeds the number of samples"),
        ({"dist": np.zeros((3, 3)), "n_clusters": 0}, "n_clusters must be an integer >= 1"),
        ({"dist": np.zeros((3, 3)), "threshold": float("nan")}, "threshold is NaN"),
        ({"dist": np.zeros((3, 2)), "n_clusters": 1}, "square"),
        ({"dist": np.array([[0, np.nan], [1, 0]]), "n_clusters": 1}, "NaN"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        agglomerative(**kwargs)


@pytest.mark.parametrize("quantile, dist, message",
                         [(1.5, np.zeros((3, 3)), "quantile"), (0.5, np.zeros((1, 1)), "at least 2")])
def test_quantile_threshold_bad_input(quantile, dist, message):
    with pytest.raises(ValueError, match=message):
        quantile_threshold(dist, quantile)


def test_condensed_input_equals_square_input():
    dist = random_distances(5, 40)
    condensed = dist[np.triu_indices(40, k=1)]
    np.testing.assert_array_equal(agglomerative(condensed, n_clusters=7),
                                  agglomerative(dist, n_clusters=7))
    assert quantile_threshold(condensed, 0.3) == quantile_threshold(dist, 0.3)


@pytest.mark.parametrize("condensed, error, message",
                         [(np.zeros(4), ValueError, "condensed matrix of length"),
                          (np.array([0.0, np.nan, 1.0]), ValueError, "NaN"),
                          (np.array([1, 2, 3]), TypeError, "floating point")])
def test_bad_condensed_input(condensed, error, message):
    with pytest.raises(error, match=message):
        agglomerative(condensed, n_clusters=1)
