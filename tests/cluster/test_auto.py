"""Label-free clustering settings (timm_reid.cluster.auto) on planted clusters and bad input."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import adjusted_rand_score

from timm_reid.cluster import (dbscan_auto, dbscan_jaccard, estimate_camera_cluster_counts, estimate_num_clusters,
                               rerank)
from timm_reid.cluster.auto import largest_gap_count


def planted(k, m, noise, seed, dim=64):
    """``k`` clusters of ``m`` points: unit-variance centres plus ``noise`` x N(0, 1) per point."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    x = np.repeat(centres, m, 0) + noise * rng.normal(size=(k * m, dim))
    return x.astype(np.float32), np.repeat(np.arange(k), m)


# (clusters, images per cluster, noise): scales from 10 to 100 clusters, 4 to 10 images each,
# tight to loose clusters (noise 0.4 puts within-cluster cosine distances at ~0.14)
PLANTED = [(50, 6, 0.15), (20, 10, 0.3), (100, 5, 0.4), (10, 8, 0.2), (40, 5, 0.3)]


@pytest.mark.parametrize("k, m, noise", PLANTED)
def test_auto_eps_recovers_planted_partition(k, m, noise):
    x, truth = planted(k, m, noise, seed=k + m)
    labels, choice = dbscan_auto(x, min_samples=4, k1=15, k2=6)
    assert adjusted_rand_score(truth, labels) > 0.95
    assert abs(choice.clusters - k) <= 0.15 * k
    assert choice.outlier_share <= 0.3 and choice.clusters == labels.max() + 1
    # the partition is DBSCAN's at the chosen eps
    np.testing.assert_array_equal(labels, dbscan_jaccard(x, eps=choice.eps, min_samples=4, k1=15, k2=6))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(12, 60), dim=st.integers(2, 16), min_samples=st.integers(2, 5),
       share=st.floats(0.05, 0.9), seed=st.integers(0, 10_000))
def test_auto_eps_reports_its_partition(n, dim, min_samples, share, seed):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    try:
        labels, choice = dbscan_auto(x, min_samples=min_samples, k1=8, k2=3, max_outlier_share=share)
    except ValueError as e:  # a documented outcome: no eps gives a cluster
        assert "no eps gives" in str(e)
        return
    dense = rerank(features=x, k1=8, k2=3, lambda_value=0.0).numpy().astype(np.float64)
    from sklearn.cluster import DBSCAN

    want = DBSCAN(eps=choice.eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)
    np.testing.assert_array_equal(labels, want)
    assert choice.outlier_share == pytest.approx(float((labels < 0).mean()))
    assert choice.largest == (np.bincount(labels[labels >= 0]).max() if (labels >= 0).any() else 0)
    if "within" in choice.reason:  # else: no candidate reached the share
        assert choice.outlier_share <= share


@pytest.mark.parametrize("k, m, noise", PLANTED)
def test_estimated_count_within_15_percent(k, m, noise):
    x, _ = planted(k, m, noise, seed=k * m)
    assert abs(estimate_num_clusters(x, k1=20) - k) <= 0.15 * k
    assert abs(estimate_num_clusters(x, rerank_distances=False) - k) <= 0.15 * k


def test_estimated_count_of_many_small_clusters_without_reranking():
    # pairs and triples: re-ranking's k1 = 20 neighbours span several clusters, plain cosine does not
    x, _ = planted(200, 3, 0.2, seed=2)
    assert abs(estimate_num_clusters(x, rerank_distances=False) - 200) <= 30


def test_camera_counts_per_camera():
    x, truth = planted(30, 6, 0.2, seed=5)
    camids = np.tile([0, 0, 0, 1, 1, 1], 30)  # every identity: 3 images in each of 2 cameras
    counts = estimate_camera_cluster_counts(x, camids, rerank_distances=False)
    assert set(counts) == {0, 1} and all(abs(c - 30) <= 4 for c in counts.values())


@settings(max_examples=30, deadline=None)
@given(heights=st.lists(st.floats(0, 10), min_size=1, max_size=40), data=st.data())
def test_largest_gap_count_against_a_loop(heights, data):
    h = np.sort(np.asarray(heights))
    n = len(h) + 1
    lo = data.draw(st.integers(1, n))
    hi = data.draw(st.integers(lo, n))
    got, gap = largest_gap_count(h, lo=lo, hi=hi)
    assert lo <= got <= hi or lo == hi
    # reference: the count c whose cut (after n - c merges) sits in the widest gap
    padded = [0.0, *h, h[-1]]
    best = max(range(lo, hi + 1), key=lambda c: (padded[n - c + 1] - padded[n - c], -c)) if lo < hi else lo
    assert padded[n - got + 1] - padded[n - got] == pytest.approx(padded[n - best + 1] - padded[n - best])
    assert gap == pytest.approx(padded[n - got + 1] - padded[n - got]) or lo == hi


def test_without_a_gap_the_count_is_the_nearest_neighbour_quantile_cut():
    # uniform noise: no gap; the count is average linkage cut at the quantile of the nearest-
    # neighbour distances, computed here with scipy
    x = np.random.default_rng(0).normal(size=(80, 8)).astype(np.float32)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.clip(1 - u @ u.T, 0, None)
    d = np.maximum(d, d.T)
    np.fill_diagonal(d, 0)
    z = linkage(d[np.triu_indices(80, 1)], "average")
    nearest = np.sort(d + np.eye(80) * 9, 1)[:, 0]
    for q in (0.5, 0.9):
        want = len(set(fcluster(z, t=np.quantile(nearest, q), criterion="distance")))
        assert estimate_num_clusters(x, quantile=q, rerank_distances=False) == want


def test_count_agrees_with_scipy_cut_at_the_gap():
    x, _ = planted(12, 5, 0.2, seed=9)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.clip(1 - u @ u.T, 0, None)
    np.fill_diagonal(d, 0)
    z = linkage(d[np.triu_indices(len(d), 1)], "average")
    h = z[:, 2]
    i = np.argmax(np.diff(h))
    want = len(set(fcluster(z, t=(h[i] + h[i + 1]) / 2, criterion="distance")))
    assert estimate_num_clusters(x, rerank_distances=False) == want == 12


# ------------------------------------------------------------------------------------------ bad input

def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="automatic eps needs more than min_samples=4 images"):
        dbscan_auto(np.eye(4, dtype=np.float32), min_samples=4)
    with pytest.raises(ValueError, match="empty"):
        estimate_num_clusters(np.zeros((0, 4), np.float32))


def test_no_usable_eps_is_a_clear_error():
    x, _ = planted(3, 5, 0.1, seed=1)  # 3 clusters, but 8 are asked for
    with pytest.raises(ValueError, match="no eps gives 8 DBSCAN clusters"):
        dbscan_auto(x, min_samples=4, k1=6, min_clusters=8)


def test_nan_features_are_refused():
    x, _ = planted(5, 5, 0.1, seed=1)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dbscan_auto(x)
    with pytest.raises(ValueError, match="NaN"):
        estimate_num_clusters(x)


def test_documented_fallbacks_one_image_per_camera_and_one_camera():
    x, _ = planted(6, 1, 0.1, seed=3)
    # one image per camera: each camera is one cluster
    assert estimate_camera_cluster_counts(x, np.arange(6)) == dict.fromkeys(range(6), 1)
    # one camera: the same as the whole set
    y, _ = planted(8, 5, 0.15, seed=4)
    assert estimate_camera_cluster_counts(y, np.zeros(40, int)) == {0: estimate_num_clusters(y)}
    # two images: the count stays within the images
    assert estimate_num_clusters(y[:2]) in (1, 2)
    with pytest.raises(ValueError, match="one camera id per image"):
        estimate_camera_cluster_counts(y, np.zeros(3, int))
