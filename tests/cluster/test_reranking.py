"""rerank(): equal to a straightforward dense implementation of Zhong et al. (IICS variant)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.cluster import rerank, rerank_blocks
from timm_reid.cluster.reranking import rerank_condensed_


def dense_rerank(dist, k1, k2, lambda_value):
    """Dense N x N re-ranking, written from the paper/reference steps with plain loops (float64)."""
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    shifted = dist - dist.min(axis=0)
    orig = (shifted / np.where(shifted.max(axis=0) == 0, 1, shifted.max(axis=0))).T
    rank = np.argsort(orig, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return [j for j in forward if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        own = reciprocal(i, k1)
        expanded = set(own)
        for j in own:
            cand = reciprocal(j, int(np.around(k1 / 2)))
            if len(set(cand) & set(own)) > 2 / 3 * len(cand):
                expanded |= set(cand)
        members = sorted(expanded)
        weight = np.exp(-orig[i, members])
        v[i, members] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((n, n))
    for i in range(n):
        shared = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)
    jaccard[jaccard < 0] = 0
    return (1 - lambda_value) * jaccard + lambda_value * orig


def random_features(seed, n, dim=6):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn((n + 3) // 4, dim, generator=gen)
    return centres.repeat_interleave(4, 0)[:n] + 0.4 * torch.randn(n, dim, generator=gen)


def cosine(features):
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    return (1 - unit @ unit.t()).float()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(4, 40), k1=st.integers(1, 12),
       k2=st.integers(1, 4), lambda_value=st.sampled_from([0.0, 0.3, 1.0]))
def test_equals_dense_reference(seed, n, k1, k2, lambda_value):
    k1, k2 = min(k1, n - 1), min(k2, n)
    dist = cosine(random_features(seed, n))
    expected = dense_rerank(dist.numpy(), k1, k2, lambda_value)
    result = rerank(dist, k1=k1, k2=k2, lambda_value=lambda_value)
    np.testing.assert_allclose(result.numpy(), expected, atol=2e-6)


def test_non_symmetric_input_reads_rows_the_reference_reads_columns():
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(30, 30, generator=gen)
    expected = dense_rerank(dist.numpy(), 6, 3, 0.3)
    np.testing.assert_allclose(rerank(dist.t(), k1=6, k2=3).numpy(), expected, atol=2e-6)


def test_features_input_equals_cosine_matrix_and_chunking_is_invisible():
    feats = random_features(1, 50)
    from_matrix = rerank(cosine(feats), k1=8, k2=3)
    from_features = rerank(features=feats, k1=8, k2=3, chunk_size=17)
    torch.testing.assert_close(from_features, from_matrix, atol=1e-5, rtol=0)


def test_query_gallery_block():
    feats = random_features(2, 60)
    full = rerank(features=feats, k1=8, k2=3)
    block = rerank(features=feats, k1=8, k2=3, num_query=20)
    torch.testing.assert_close(block, full[:20, 20:])
    starts = [start for start, _, _ in rerank_blocks(features=feats, k1=8, num_query=20,
                                                     chunk_size=6)]
    assert starts == [0, 6, 12, 18]


def test_float16_storage():
    dist = cosine(random_features(3, 40))
    result = rerank(dist, k1=8, k2=3, dtype=torch.float16)
    assert result.dtype == torch.float16
    np.testing.assert_allclose(result.float().numpy(), dense_rerank(dist.numpy(), 8, 3, 0.3),
                               atol=3e-3)


def test_numpy_input_and_default_parameters():
    dist = cosine(random_features(4, 45)).numpy()
    np.testing.assert_allclose(rerank(dist).numpy(), dense_rerank(dist, 20, 6, 0.3), atol=2e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dist": torch.zeros(3, 4)}, "square"),
        ({"dist": torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), "k1": 1, "k2": 1}, "NaN"),
        ({"dist": torch.zeros(5, 5), "k1": 5}, "k1 \\+ 1 <= N"),
        ({"dist": torch.zeros(5, 5), "k1": 2, "k2": 6}, "k2 <= N"),
        ({"dist": torch.zeros(5, 5), "k1": 0}, "k1 must be an integer >= 1"),
        ({"dist": torch.zeros(5, 5), "k1": 2, "k2": 2, "lambda_value": 1.5}, "lambda_value"),
        ({"dist": torch.zeros(5, 5), "k1": 2, "k2": 2, "dtype": torch.int8}, "dtype"),
        ({"dist": torch.zeros(5, 5), "k1": 2, "k2": 2, "num_query": 5}, "num_query"),
        ({}, "exactly one"),
        ({"dist": torch.zeros(5, 5), "features": torch.zeros(5, 2)}, "exactly one"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rerank(**kwargs)


def test_overwrite_writes_the_result_into_the_input():
    dist = cosine(random_features(5, 40))
    expected = rerank(dist, k1=8, k2=3)
    result = rerank(dist, k1=8, k2=3, overwrite=True)
    assert result.data_ptr() == dist.data_ptr()
    torch.testing.assert_close(dist, expected)


@pytest.mark.parametrize("kwargs, message",
                         [({"dtype": torch.float16}, "dist.dtype == dtype"),
                          ({"num_query": 10}, "no num_query")])
def test_overwrite_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rerank(cosine(random_features(6, 20)), k1=4, k2=2, overwrite=True, **kwargs)


def symmetric_with_diagonal(seed, n):
    """A float32 symmetric distance matrix with a non-zero diagonal (as `1 - cos` has after
    rounding), its condensed upper triangle and its diagonal."""
    dist = cosine(random_features(seed, n))
    dist = torch.triu(dist, 1) + torch.triu(dist, 1).t()
    diagonal = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 1e-3
    dist += torch.diag(diagonal)
    return dist, dist.numpy()[np.triu_indices(n, k=1)].copy(), diagonal.numpy()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(4, 40), k1=st.integers(1, 12),
       k2=st.integers(1, 4), lambda_value=st.sampled_from([0.0, 0.3, 1.0]),
       chunk=st.sampled_from([None, 1, 3, 7]))
def test_condensed_in_place_equals_dense_upper_triangle_bit_for_bit(seed, n, k1, k2, lambda_value, chunk):
    k1, k2 = min(k1, n - 1), min(k2, n)
    dist, condensed, diagonal = symmetric_with_diagonal(seed, n)
    expected = rerank(dist, k1=k1, k2=k2, lambda_value=lambda_value).numpy()[np.triu_indices(n, k=1)]
    # Blocks of one row are the hardest case for the last-to-first write order.
    result = rerank_condensed_(condensed, diagonal, k1=k1, k2=k2, lambda_value=lambda_value,
                               chunk_size=chunk)
    assert result is condensed
    np.testing.assert_array_equal(condensed, expected)


def test_condensed_default_diagonal_is_zero():
    dist, condensed, _ = symmetric_with_diagonal(7, 30)
    dist.fill_diagonal_(0)
    expected = rerank(dist, k1=6, k2=3).numpy()[np.triu_indices(30, k=1)]
    np.testing.assert_array_equal(rerank_condensed_(condensed, k1=6, k2=3), expected)


@pytest.mark.parametrize("condensed", [np.zeros(6), np.zeros((4, 4), dtype=np.float32)])
def test_condensed_needs_a_float32_vector(condensed):
    with pytest.raises(ValueError, match="1-D float32 NumPy condensed vector"):
        rerank_condensed_(condensed, k1=1, k2=1)
