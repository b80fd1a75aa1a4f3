"""cluster_intra_camera / cluster_inter_camera: the IICS steps composed from tested parts."""

import numpy as np
import pytest
import torch

from timm_reid.cluster import camera
from timm_reid.cluster import (agglomerative, cluster_inter_camera, cluster_intra_camera,
                               cross_camera_distance, quantile_threshold, rerank)


def camera_data(seed=0, sizes=(40, 12, 36)):
    gen = torch.Generator().manual_seed(seed)
    camids = torch.cat([torch.full((n,), cam) for cam, n in enumerate(sizes)])
    camids = camids[torch.randperm(len(camids), generator=gen)]
    centres = torch.randn(10, 16, generator=gen)
    identity = torch.randint(0, 10, (len(camids),), generator=gen)
    features = centres[identity] + 0.5 * torch.randn(len(camids), 16, generator=gen)
    return features, camids


def test_intra_camera_equals_per_camera_pipeline_with_offsets():
    features, camids = camera_data()
    result = cluster_intra_camera(features, camids, n_clusters=8, k1=5, k2=2)
    offset = 0
    for cam in range(3):
        members = (camids == cam).nonzero().squeeze(1)
        expected = agglomerative(rerank(features=features[members], k1=5, k2=2), n_clusters=8)
        np.testing.assert_array_equal(result.labels[members].numpy(), expected + offset)
        offset += 8
    assert result.counts == {0: 8, 1: 8, 2: 8}
    assert result.labels.dtype == torch.int64


def test_small_camera_shrinks_only_its_own_count():
    features, camids = camera_data(sizes=(30, 5, 30))  # camera 1 has fewer images than clusters
    result = cluster_intra_camera(features, camids, n_clusters=10, k1=5, k2=2)
    assert result.counts == {0: 10, 1: 2, 2: 10}  # the reference would give camera 2 only 2
    assert result.labels.max() == 21 and result.labels.min() == 0


def test_single_image_camera_and_no_rerank():
    features, camids = camera_data(sizes=(20, 1))
    result = cluster_intra_camera(features, camids, n_clusters=4, rerank=False)
    members = (camids == 0).nonzero().squeeze(1)
    unit = torch.nn.functional.normalize(features[members], dim=1)
    np.testing.assert_array_equal(result.labels[members].numpy(),
                                  agglomerative(1 - unit @ unit.t(), n_clusters=4))
    assert result.counts == {0: 4, 1: 1}
    assert int(result.labels[camids == 1]) == 4


def test_intra_camera_threshold_mode_drops_singletons():
    features, camids = camera_data()
    result = cluster_intra_camera(features, camids, threshold_quantile=0.05, k1=5, k2=2,
                                  drop_singletons=True)
    members = (camids == 0).nonzero().squeeze(1)
    dist = rerank(features=features[members], k1=5, k2=2)
    expected = agglomerative(dist, threshold=quantile_threshold(dist, 0.05), drop_singletons=True)
    np.testing.assert_array_equal(result.labels[members].numpy(), expected)
    kept = result.labels[result.labels >= 0]
    assert sorted(torch.unique(kept).tolist()) == list(range(sum(result.counts.values())))


def test_inter_camera_equals_composed_pipeline():
    features, camids = camera_data(1)
    scores = torch.softmax(3 * torch.randn(len(camids), 24, generator=torch.Generator().manual_seed(2)), 1)
    labels = cluster_inter_camera(features, scores, camids, mu=0.02, n_clusters=12, k1=6, k2=3)
    dist = rerank(cross_camera_distance(features, scores, camids, 0.02), k1=6, k2=3)
    np.testing.assert_array_equal(labels.numpy(), agglomerative(dist, n_clusters=12))
    thresholded = cluster_inter_camera(features, scores, camids, mu=0.02, threshold_quantile=0.02,
                                       k1=6, k2=3, drop_singletons=True)
    expected = agglomerative(dist, threshold=quantile_threshold(dist, 0.02), drop_singletons=True)
    np.testing.assert_array_equal(thresholded.numpy(), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_clusters": 5, "threshold_quantile": 0.1}, "not both"),
        ({"n_clusters": 0}, "n_clusters must be"),
        ({"threshold_quantile": 2.0}, "threshold_quantile must lie"),
    ],
)
def test_bad_clustering_target(kwargs, message):
    features, camids = camera_data()
    with pytest.raises(ValueError, match=message):
        cluster_intra_camera(features, camids, **kwargs)
    with pytest.raises(ValueError, match=message):
        cluster_inter_camera(features, torch.ones(len(camids), 4), camids, mu=0.1, **kwargs)


def test_bad_inputs():
    features, camids = camera_data()
    with pytest.raises(ValueError, match="camids has 10 entries"):
        cluster_intra_camera(features, camids[:10])
    with pytest.raises(ValueError, match="NaN"):
        cluster_intra_camera(torch.full((4, 3), float("nan")), [0, 0, 1, 1], n_clusters=1)
    with pytest.raises(ValueError, match="exceeds the number of images"):
        cluster_inter_camera(features, torch.ones(len(camids), 4), camids, mu=0.1)


def test_inter_camera_topk_jaccard_option():
    features, camids = camera_data(3)
    scores = torch.softmax(3 * torch.randn(len(camids), 24, generator=torch.Generator().manual_seed(4)), 1)
    labels = cluster_inter_camera(features, scores, camids, mu=0.05, n_clusters=10, rerank=False,
                                  jaccard_topk=4)
    dist = cross_camera_distance(features, scores, camids, 0.05, topk=4)
    np.testing.assert_array_equal(labels.numpy(), agglomerative(dist, n_clusters=10))


@pytest.mark.parametrize("block_elements", [1, 500, 1 << 22])
def test_inter_camera_condensed_path_equals_the_dense_path(block_elements, monkeypatch):
    # Row blocks of 1 row to all rows: the distance, the in-place re-ranking (written from the
    # last block to the first) and the linkage must not depend on them.
    monkeypatch.setattr(camera, "_CONDENSED_BLOCK_ELEMENTS", block_elements)
    features, camids = camera_data(5, sizes=(70, 30, 50))
    scores = torch.softmax(3 * torch.randn(len(camids), 24, generator=torch.Generator().manual_seed(6)), 1)
    dist = rerank(cross_camera_distance(features, scores, camids, 0.02), k1=8, k2=3)
    labels = cluster_inter_camera(features, scores, camids, mu=0.02, n_clusters=20, k1=8, k2=3)
    np.testing.assert_array_equal(labels.numpy(), agglomerative(dist, n_clusters=20))
    thresholded = cluster_inter_camera(features, scores, camids, mu=0.02, threshold_quantile=0.01,
                                       k1=8, k2=3, drop_singletons=True)
    expected = agglomerative(dist, threshold=quantile_threshold(dist, 0.01), drop_singletons=True)
    np.testing.assert_array_equal(thresholded.numpy(), expected)


def test_inter_camera_single_image():
    labels = cluster_inter_camera(torch.ones(1, 3), torch.ones(1, 2), [0], mu=0.02, n_clusters=1)
    np.testing.assert_array_equal(labels.numpy(), [0])


def test_dense_route_gives_the_condensed_route_labels():
    # The route CUDA features take (dense matrix, re-ranked in place, float32 upper triangle),
    # run here on CPU tensors: the same labels as the condensed route.
    features, camids = camera_data(7)
    scores = torch.softmax(3 * torch.randn(len(camids), 24, generator=torch.Generator().manual_seed(8)), 1)
    reranking = {"k1": 8, "k2": 3, "lambda_value": 0.3}
    condensed = camera._dense_condensed(features, scores, camids, 0.02, None, True, reranking)
    assert condensed.dtype == np.float32
    labels = cluster_inter_camera(features, scores, camids, mu=0.02, n_clusters=15, **reranking)
    np.testing.assert_array_equal(agglomerative(condensed, n_clusters=15, overwrite=True), labels.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inter_camera_on_cuda_equals_cpu():
    features, camids = camera_data(9)
    scores = torch.softmax(3 * torch.randn(len(camids), 24, generator=torch.Generator().manual_seed(10)), 1)
    cpu = cluster_inter_camera(features, scores, camids, mu=0.02, n_clusters=15, k1=8, k2=3)
    gpu = cluster_inter_camera(features.cuda(), scores.cuda(), camids.cuda(), mu=0.02, n_clusters=15,
                               k1=8, k2=3)
    np.testing.assert_array_equal(gpu.numpy(), cpu.numpy())
