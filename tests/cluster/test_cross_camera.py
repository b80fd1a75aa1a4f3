"""Weighted Jaccard and the cross-camera distance against their direct formulas (float64)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.cluster import cross_camera_distance, weighted_jaccard
from timm_reid.cluster.cross_camera import cross_camera_condensed, jaccard_blocks


def direct_jaccard(scores):
    s = np.asarray(scores, dtype=np.float64)
    minimum = np.minimum(s[:, None], s[None]).sum(-1)
    maximum = np.maximum(s[:, None], s[None]).sum(-1)
    return minimum / maximum


def softmax_scores(seed, n, cameras=3, classes=7, temperature=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = temperature * torch.randn(n, cameras, classes, generator=gen)
    return torch.softmax(logits, dim=-1).reshape(n, cameras * classes)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), chunk=st.sampled_from([None, 1, 6]))
def test_exact_jaccard_equals_direct_formula(seed, n, chunk):
    scores = softmax_scores(seed, n)
    np.testing.assert_allclose(weighted_jaccard(scores, chunk_size=chunk).numpy(),
                               direct_jaccard(scores), atol=2e-6)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), k=st.integers(1, 21))
def test_topk_never_overestimates_and_is_exact_with_all_entries(seed, n, k):
    scores = softmax_scores(seed, n)
    approx = weighted_jaccard(scores, topk=k).numpy()
    assert (approx <= direct_jaccard(scores) + 1e-6).all()
    if k == 21:
        np.testing.assert_allclose(approx, direct_jaccard(scores), atol=2e-6)


def test_topk_is_exact_for_sparse_scores():
    scores = torch.zeros(6, 10)
    scores[torch.arange(6), torch.tensor([0, 0, 3, 3, 9, 1])] = 0.7
    scores[torch.arange(6), torch.tensor([1, 2, 4, 5, 8, 0])] = 0.3
    np.testing.assert_allclose(weighted_jaccard(scores, topk=2).numpy(), direct_jaccard(scores),
                               atol=1e-6)


def test_all_zero_rows_have_zero_similarity():
    np.testing.assert_array_equal(weighted_jaccard(np.zeros((2, 3))).numpy(), np.zeros((2, 2)))


def test_cross_camera_distance_equals_formula():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(30, 8, generator=gen)
    scores = softmax_scores(1, 30)
    camids = torch.randint(0, 3, (30,), generator=gen)
    unit = features.double() / features.double().norm(dim=1, keepdim=True)
    other = (camids[:, None] != camids[None, :]).numpy()
    expected = 1 - (unit @ unit.t()).numpy() - 0.02 * direct_jaccard(scores) * other
    result = cross_camera_distance(features, scores, camids, 0.02, chunk_size=7)
    np.testing.assert_allclose(result.numpy(), expected, atol=2e-6)
    without = cross_camera_distance(features, scores, camids, 0.0)
    np.testing.assert_allclose(without.numpy(), 1 - (unit @ unit.t()).numpy(), atol=2e-6)


@pytest.mark.parametrize(
    "scores, camids, mu, message",
    [
        (np.ones((3, 4)), [0, 1], 0.1, "camids has 2 entries"),
        (np.ones((2, 4)), [0, 1, 2], 0.1, "scores has 2 rows"),
        (-np.ones((3, 4)), [0, 1, 2], 0.1, "non-negative"),
        (np.full((3, 4), np.nan), [0, 1, 2], 0.1, "NaN"),
        (np.ones((3, 4)), [0, 1, 2], -0.1, "mu must be"),
        (np.ones((3, 4)), [0, 1, 2], float("nan"), "mu must be"),
    ],
)
def test_bad_input(scores, camids, mu, message):
    with pytest.raises(ValueError, match=message):
        cross_camera_distance(np.ones((3, 5)), scores, camids, mu)


def test_topk_must_be_positive():
    with pytest.raises(ValueError, match="topk"):
        weighted_jaccard(np.ones((3, 4)), topk=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_the_fused_kernel_with_the_same_result():
    gen = torch.Generator().manual_seed(1)
    features, scores = torch.randn(50, 8, generator=gen), softmax_scores(2, 50)
    camids = torch.randint(0, 3, (50,), generator=gen)
    cpu = cross_camera_distance(features, scores, camids, 0.02)
    gpu = cross_camera_distance(features.cuda(), scores.cuda(), camids.cuda(), 0.02)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 40), chunk=st.sampled_from([None, 1, 6]),
       topk=st.sampled_from([None, 4]), mu=st.sampled_from([0.0, 0.02]))
def test_condensed_distance_is_the_upper_triangle_of_the_square_one(seed, n, chunk, topk, mu):
    gen = torch.Generator().manual_seed(seed)
    features, scores = torch.randn(n, 8, generator=gen), softmax_scores(seed, n)
    camids = torch.randint(0, 3, (n,), generator=gen)
    square = cross_camera_distance(features, scores, camids, mu, topk=topk).numpy()
    condensed, diagonal = cross_camera_condensed(features, scores, camids, mu, chunk_size=chunk, topk=topk)
    assert condensed.dtype == diagonal.dtype == np.float32
    np.testing.assert_allclose(condensed, square[np.triu_indices(n, k=1)], atol=1e-6, rtol=0)
    np.testing.assert_allclose(diagonal, np.diag(square), atol=1e-6, rtol=0)


@pytest.mark.parametrize("topk", [None, 3])
def test_upper_jaccard_blocks_are_the_column_tails_of_the_full_ones(topk):
    scores = softmax_scores(5, 23)
    full = list(jaccard_blocks(scores, chunk_size=5, topk=topk))
    upper = list(jaccard_blocks(scores, chunk_size=5, topk=topk, upper=True))
    for (start, stop, block), (start_u, stop_u, tail) in zip(full, upper):
        assert (start, stop) == (start_u, stop_u)
        torch.testing.assert_close(tail, block[:, start:], atol=1e-6, rtol=0)
