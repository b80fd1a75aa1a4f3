"""Pieces of the stages: per-camera vs joint forward, losses, centring, diagnostics."""
import copy

import numpy as np
import pytest
import torch

from timm_reid.factory import create_model
from timm_reid.train.diagnostics import cluster_quality, label_stats, same_camera_top1
from timm_reid.train.features import center_per_camera
from timm_reid.train.iics import _forward_by_camera
from timm_reid.train.losses import triplet_loss
from timm_reid.train.model import Head, ReIDNet


def _net(**patch):
    torch.manual_seed(0)
    return ReIDNet(create_model("test_convnext", num_classes=0, **patch))


def test_joint_forward_equals_per_camera_forward_without_aibn():
    net = _net(tnorm=(1, 2, 3), num_cameras=3).train()
    twin = copy.deepcopy(net)
    images = torch.randn(12, 3, 64, 32)
    camids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    a = _forward_by_camera(net, images, camids, joint=False)
    b = _forward_by_camera(twin, images, camids, joint=True)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for (name, x), (_, y) in zip(net.backbone.named_buffers(), twin.backbone.named_buffers()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=name)  # TNorm running stats


def test_joint_forward_differs_with_aibn_batch_statistics():
    net = _net(aibn=(3, 4), entry="replace").train()  # blend at 0 uses no batch statistics
    twin = copy.deepcopy(net)
    images = torch.randn(8, 3, 64, 32)
    camids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    images[4:] += 2.0  # a camera shift makes the pooled batch statistics differ
    a = _forward_by_camera(net, images, camids, joint=False)
    b = _forward_by_camera(twin, images, camids, joint=True)
    assert not torch.allclose(a, b, atol=1e-4)


def test_per_camera_forward_keeps_sample_order():
    net = _net().eval()
    images = torch.randn(6, 3, 64, 32)
    camids = torch.tensor([2, 0, 1, 0, 2, 1])
    torch.testing.assert_close(_forward_by_camera(net, images, camids, joint=False), net(images),
                               rtol=1e-4, atol=1e-5)


def test_triplet_loss_zero_when_separated_and_margin_when_collapsed():
    targets = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.0, 0], [0, 0.01], [10, 0], [10, 0.01]])
    assert triplet_loss(far, targets, margin=0.3).item() == pytest.approx(0.0)
    same = torch.zeros(4, 2)
    assert triplet_loss(same, targets, margin=0.3).item() == pytest.approx(0.3, abs=1e-4)


def test_center_per_camera_removes_camera_offsets():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    camids = np.repeat([0, 1], 20)
    shifted = base + np.where(camids[:, None] == 1, 5.0, 0.0)
    out = center_per_camera(shifted, camids)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    for c in (0, 1):
        assert np.abs(out[camids == c].mean(0)).max() < 0.5


def test_cluster_quality_against_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 15, 300)
    pred = np.where(rng.random(300) < 0.7, truth, rng.integers(0, 20, 300))
    q = cluster_quality(truth, pred)
    assert q["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(truth, pred))
    assert q["ari"] == pytest.approx(metrics.adjusted_rand_score(truth, pred))
    assert cluster_quality(truth, truth) == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_label_stats_and_same_camera_share():
    stats = label_stats(np.array([0, 0, 1, 2, -1]), np.array([0, 1, 1, 0, 0]))
    assert stats == {"clusters": 3, "singletons": 2, "largest": 2, "labelled": 4, "multi_camera_share": 1 / 3}
    q = np.eye(2, dtype=np.float32)
    g = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    # query 0 (id 5, cam 0): its same-id same-cam entry is excluded, top-1 is gallery 1 (cam 1)
    # query 1 (id 6, cam 1): top-1 is gallery 2 (cam 1, another identity) -> same camera
    share = same_camera_top1(q, g, np.array([5, 6]), np.array([5, 7, 8]), np.array([0, 1]), np.array([0, 1, 1]))
    assert share == pytest.approx(0.5)


def test_centroid_head_is_a_cosine_classifier_over_cluster_means():
    """Independent formula: standardise with the features' own mean/variance, average per cluster,
    logits = cos(z, centroid) * |z| / (T * mean |z|)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 12, generator=g, dtype=torch.float64) * 3 + 1
    labels = torch.arange(40) % 5
    head = Head(12, 6).eval()  # one class more than used: an empty cluster gets a zero row
    head.init_from_centroids(feats.numpy(), labels.numpy(), temperature=0.1)
    z = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, unbiased=False) + head[0].eps)
    cent = torch.stack([z[labels == k].mean(0) for k in range(5)])
    cos = torch.nn.functional.cosine_similarity(z[:, None], cent[None], dim=2)
    want = cos * z.norm(dim=1, keepdim=True) / (0.1 * z.norm(dim=1).mean())
    got = head(feats.float()).double()
    torch.testing.assert_close(got[:, :5], want, atol=1e-4, rtol=1e-4)
    assert torch.all(got[:, 5] == 0)
