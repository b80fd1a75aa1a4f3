"""The in-place nearest-neighbour-chain average linkage (`agglomerative(..., overwrite=True)`):
SciPy's merges bit for bit on float64, a naive greedy average linkage written here, and the same
partitions on well-separated float32 data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import linkage

from timm_reid.cluster import agglomerative, quantile_threshold
from timm_reid.cluster._average_linkage import nn_chain_average


def random_condensed(seed, n, dim=3):
    """Euclidean distances of random points, condensed: no ties (almost surely)."""
    points = np.random.default_rng(seed).normal(size=(n, dim))
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    return dist[np.triu_indices(n, k=1)], dist


def greedy_average_heights(dist):
    """Merge heights of average linkage by its definition: repeatedly join the two clusters with
    the smallest mean pairwise distance between their members (O(n^4), for small n)."""
    clusters = [[i] for i in range(len(dist))]
    heights = []
    while len(clusters) > 1:
        means = {(a, b): dist[np.ix_(clusters[a], clusters[b])].mean()
                 for a in range(len(clusters)) for b in range(a + 1, len(clusters))}
        (a, b), height = min(means.items(), key=lambda item: item[1])
        heights.append(height)
        clusters[a] += clusters.pop(b)
    return np.array(heights)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 60))
def test_float64_merges_equal_scipy_bit_for_bit(seed, n):
    condensed, _ = random_condensed(seed, n)
    expected = linkage(condensed, method="average")
    np.testing.assert_array_equal(nn_chain_average(condensed.copy(), n), expected)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 14))
def test_heights_equal_the_greedy_definition(seed, n):
    condensed, dist = random_condensed(seed, n)
    np.testing.assert_allclose(nn_chain_average(condensed, n)[:, 2], greedy_average_heights(dist),
                               rtol=1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 60), fraction=st.floats(0, 1),
       quantile=st.floats(0, 1))
def test_float64_partitions_equal_scipy_path(seed, n, fraction, quantile):
    condensed, _ = random_condensed(seed, n)
    n_clusters = 1 + int(fraction * (n - 1))
    np.testing.assert_array_equal(agglomerative(condensed.copy(), n_clusters=n_clusters, overwrite=True),
                                  agglomerative(condensed, n_clusters=n_clusters))
    threshold = quantile_threshold(condensed, quantile)
    np.testing.assert_array_equal(agglomerative(condensed.copy(), threshold=threshold, overwrite=True),
                                  agglomerative(condensed, threshold=threshold))


def separated_condensed(seed, n, groups):
    """float32 distances of points in `groups` blobs 100 apart (spread 1): the cut at `groups`
    clusters, and any threshold between the scales, are far from every near-tie."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, 4)) * 100
    points = centres[rng.integers(0, groups, n)] + rng.normal(size=(n, 4))
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    return dist[np.triu_indices(n, k=1)].astype(np.float32)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 60), groups=st.integers(1, 6))
def test_float32_partitions_equal_scipy_on_separated_data(seed, n, groups):
    condensed = separated_condensed(seed, n, groups)
    n_clusters = min(groups, n)
    expected = agglomerative(condensed.astype(np.float64), n_clusters=n_clusters)
    np.testing.assert_array_equal(agglomerative(condensed.copy(), n_clusters=n_clusters, overwrite=True),
                                  expected)
    for threshold in (30.0, 0.5):
        np.testing.assert_array_equal(
            agglomerative(condensed.copy(), threshold=threshold, overwrite=True, drop_singletons=True),
            agglomerative(condensed.astype(np.float64), threshold=threshold, drop_singletons=True))


def test_float32_heights_are_the_float32_rounding_of_scipys():
    condensed, _ = random_condensed(0, 50)
    expected = linkage(condensed.astype(np.float32).astype(np.float64), method="average")
    merges = nn_chain_average(condensed.astype(np.float32), 50)
    np.testing.assert_array_equal(merges[:, [0, 1, 3]], expected[:, [0, 1, 3]])
    np.testing.assert_allclose(merges[:, 2], expected[:, 2], rtol=1e-6)


def test_infinite_distances_merge_last():
    # Two pairs at distance 1, everything across the pairs infinite.
    condensed = np.array([1, np.inf, np.inf, np.inf, np.inf, 1], dtype=np.float32)
    merges = nn_chain_average(condensed, 4)
    np.testing.assert_array_equal(merges[:, 2], [1, 1, np.inf])
    np.testing.assert_array_equal(agglomerative(np.array([1, np.inf, np.inf, np.inf, np.inf, 1]),
                                                n_clusters=2, overwrite=True), [0, 0, 1, 1])


def test_overwrite_uses_the_vector_itself():
    condensed = separated_condensed(0, 20, 3)
    before = condensed.copy()
    agglomerative(condensed, n_clusters=3, overwrite=True)
    assert not np.array_equal(condensed, before)  # working storage: the content is gone


@pytest.mark.parametrize("dist", [np.zeros((3, 3)), np.zeros(3, dtype=np.float16)])
def test_overwrite_needs_a_float32_or_float64_condensed_vector(dist):
    with pytest.raises(ValueError, match="overwrite=True needs dist as a 1-D float32 or float64"):
        agglomerative(dist, n_clusters=1, overwrite=True)
