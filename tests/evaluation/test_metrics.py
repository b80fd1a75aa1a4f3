"""evaluate(): exact against a full stable-argsort loop (independent formula) and sklearn's AP."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from timm_reid.cluster import rerank
from timm_reid.evaluation import evaluate


def reference_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Straightforward per-query evaluation over a full stable argsort (the peer approach)."""
    dist = np.asarray(dist, dtype=np.float64)
    aps, inps, cmc, skipped = [], [], np.zeros(max_rank), 0
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        hits = (g_pids[order] == q_pids[i])[keep]
        if not hits.any():
            skipped += 1
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
        cmc[ranks[0] - 1:] += 1
    return {"mAP": np.mean(aps), "mINP": np.mean(inps), "cmc": cmc[:max_rank] / len(aps),
            "num_valid_queries": len(aps), "num_skipped_queries": skipped}


def random_problem(seed, num_query=40, num_gallery=300, num_ids=25, num_cams=4, levels=None):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_cams = rng.integers(0, num_cams, num_query)
    g_cams = rng.integers(0, num_cams, num_gallery)
    if levels is None:
        dist = rng.random((num_query, num_gallery)) + 0.5 * (q_pids[:, None] != g_pids[None, :])
    else:  # few distinct values: many ties
        dist = rng.integers(0, levels, (num_query, num_gallery)).astype(np.float64)
    return dist, q_pids, g_pids, q_cams, g_cams


def assert_matches_reference(result, expected):
    for key in ("mAP", "mINP"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=1e-12, atol=1e-12)
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert result["num_skipped_queries"] == expected["num_skipped_queries"]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_query=st.integers(1, 30),
    num_gallery=st.integers(1, 60),
    levels=st.sampled_from([None, 2, 5]),
    chunk_size=st.sampled_from([None, 1, 7]),
    dtype=st.sampled_from([np.float64, np.float32, np.float16]),
)
def test_equals_stable_argsort_reference(seed, num_query, num_gallery, levels, chunk_size, dtype):
    dist, qp, gp, qc, gc = random_problem(seed, num_query, num_gallery, num_ids=6, num_cams=3,
                                          levels=levels)
    dist = dist.astype(dtype)
    expected_valid = sum(((gp == p) & (gc != c)).any() for p, c in zip(qp, qc))
    if expected_valid == 0:
        with pytest.raises(ValueError, match="no valid query"):
            evaluate(dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
        return
    result = evaluate(dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, max_rank=8,
                      chunk_size=chunk_size)
    assert_matches_reference(result, reference_metrics(dist, qp, gp, qc, gc, 8))


def test_reported_ranks_and_keys():
    dist, qp, gp, qc, gc = random_problem(0)
    result = evaluate(dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, max_rank=20)
    expected = reference_metrics(dist, qp, gp, qc, gc, 20)
    assert result["rank1"] == expected["cmc"][0]
    assert result["rank5"] == expected["cmc"][4]
    assert result["rank10"] == expected["cmc"][9]
    assert result["cmc"].shape == (20,)


def test_rank10_reported_when_curve_is_shorter():
    dist, qp, gp, qc, gc = random_problem(1)
    short = evaluate(dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, max_rank=1)
    full = reference_metrics(dist, qp, gp, qc, gc, 10)
    assert short["cmc"].shape == (1,)
    assert short["rank10"] == full["cmc"][9]


def test_average_precision_equals_sklearn_without_ties():
    dist, qp, gp, qc, gc = random_problem(2, num_query=1, num_gallery=200, num_ids=3)
    keep = ~((gp == qp[0]) & (gc == qc[0]))
    expected = average_precision_score(gp[keep] == qp[0], -dist[0, keep])
    result = evaluate(dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert result["mAP"] == pytest.approx(expected, rel=1e-12)


def test_ties_rank_by_gallery_index():
    # Both gallery images at distance 0.5: the match at index 1 ranks second (not first).
    dist = np.array([[0.5, 0.5]])
    result = evaluate(dist, q_pids=[7], g_pids=[3, 7], q_camids=[0], g_camids=[1, 1])
    assert result["rank1"] == 0.0 and result["mAP"] == 0.5


def test_same_identity_same_camera_is_excluded_and_skips_are_counted():
    # Query 0's only same-identity image shares its camera: no valid match -> skipped.
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    result = evaluate(dist, q_pids=[1, 2], g_pids=[1, 2, 5], q_camids=[0, 0], g_camids=[0, 1, 1])
    assert result["num_skipped_queries"] == 1 and result["num_valid_queries"] == 1
    assert result["mAP"] == 0.5  # query 1: gallery 2 (other identity) first, then the match


def test_features_path_equals_cosine_distmat():
    rng = np.random.default_rng(3)
    _, qp, gp, qc, gc = random_problem(3)
    qf, gf = rng.normal(size=(40, 16)), rng.normal(size=(300, 16))
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    from_dist = evaluate(torch.tensor(1 - qn @ gn.T, dtype=torch.float32),
                         q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    from_features = evaluate(query_features=torch.tensor(qf, dtype=torch.float32),
                             gallery_features=torch.tensor(gf, dtype=torch.float32),
                             q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, chunk_size=9)
    assert from_features["mAP"] == pytest.approx(from_dist["mAP"], abs=1e-6)
    np.testing.assert_allclose(from_features["cmc"], from_dist["cmc"], atol=1e-6)


def test_rerank_path_equals_evaluating_reranked_distances():
    rng = np.random.default_rng(4)
    _, qp, gp, qc, gc = random_problem(4, num_query=30, num_gallery=120)
    feats = torch.tensor(rng.normal(size=(150, 8)), dtype=torch.float32)
    reranked = rerank(features=feats, num_query=30)
    expected = evaluate(reranked, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    result = evaluate(query_features=feats[:30], gallery_features=feats[30:], rerank=True,
                      q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["rank1"] == pytest.approx(expected["rank1"], abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_match_cpu():
    dist, qp, gp, qc, gc = random_problem(5)
    on_gpu = evaluate(torch.tensor(dist).cuda(), q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert on_gpu["mAP"] == pytest.approx(reference_metrics(dist, qp, gp, qc, gc, 50)["mAP"])


IDS = {"q_pids": [1, 2], "g_pids": [1, 2, 3], "q_camids": [0, 0], "g_camids": [1, 1, 1]}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"distmat": np.zeros((2, 3)), **IDS, "q_pids": [1]}, ValueError, "q_pids has 1 entries"),
        ({"distmat": np.zeros((2, 3)), **IDS, "g_camids": [1, 1]}, ValueError, "g_camids has 2"),
        ({"distmat": np.zeros((2, 0)), **IDS, "g_pids": [], "g_camids": []}, ValueError, "empty"),
        ({"distmat": np.array([[0.0, np.nan, 1.0], [0, 0, 0]]), **IDS}, ValueError, "NaN"),
        ({"distmat": np.zeros((2, 3)), **IDS, "g_pids": [5, 6, 7]}, ValueError, "no valid query"),
        ({"distmat": np.zeros((2, 3)), **IDS, "max_rank": 0}, ValueError, "max_rank"),
        ({"distmat": np.zeros((2, 3)), **IDS, "q_pids": [1.0, 2.0]}, TypeError, "integer ids"),
        ({"distmat": np.zeros((2, 3)), **IDS, "rerank": True}, ValueError, "rerank=True needs"),
        ({"distmat": np.zeros((2, 3)), "query_features": np.zeros((2, 4)), **IDS}, ValueError,
         "not both"),
        ({**IDS, "query_features": np.zeros((2, 4))}, ValueError, "pass distmat"),
        ({**IDS, "query_features": np.ones((2, 4)), "gallery_features": np.ones((3, 5))},
         ValueError, "dimension 4"),
        ({"distmat": "dist", **IDS}, TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        evaluate(**kwargs)


def test_bfloat16_distances_rank_like_their_float32_values():
    dist, qp, gp, qc, gc = random_problem(6, levels=50)
    low = torch.tensor(dist, dtype=torch.bfloat16)
    result = evaluate(low, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert_matches_reference(result, reference_metrics(low.float().numpy(), qp, gp, qc, gc, 50))
