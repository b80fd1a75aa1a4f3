"""GUR's association embedding and label unification against formulas written here."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.cluster import association
from timm_reid.cluster.association import association_embedding, unify_labels


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_association_embedding_is_the_concatenated_softmax_per_memory():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 4))
    memories = [rng.normal(size=(3, 4)), rng.normal(size=(2, 4))]
    out = association_embedding(q, memories, sigma=0.5).numpy()
    expected = np.concatenate([softmax(unit(q) @ unit(m).T / 0.5) for m in memories], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.shape == (5, 5)
    np.testing.assert_allclose(out[:, :3].sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(out[:, 3:].sum(1), 1, atol=1e-6)


def test_association_embedding_hand_case():
    # q = (1, 0); memory rows (1, 0) and (0, 1): logits 1/sigma and 0
    out = association_embedding([[1.0, 0.0]], [torch.tensor([[1.0, 0.0], [0.0, 1.0]])], sigma=1.0)
    e = np.exp(1.0)
    np.testing.assert_allclose(out.numpy(), [[e / (e + 1), 1 / (e + 1)]], atol=1e-6)


def test_association_embedding_errors():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        association_embedding(np.ones((2, 3)), [np.ones((1, 3))], sigma=0)
    with pytest.raises(ValueError, match="at least one memory"):
        association_embedding(np.ones((2, 3)), [])
    with pytest.raises(ValueError, match=r"memories\[0\] has shape \(1, 2\)"):
        association_embedding(np.ones((2, 3)), [np.ones((1, 2))])


def test_unify_labels_hand_case():
    """Two infrared clusters along the axes, one outlier; visible samples near each."""
    infrared = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.2]]
    infrared_labels = [0, 0, 1, -1]
    visible = [[1.0, 0.05], [0.1, 1.0], [-1.0, 0.1]]
    # k = 1: each visible sample takes the label of its most similar infrared sample
    assert unify_labels(visible, infrared, infrared_labels, k=1, smooth=False).tolist() == [0, 1, -1]
    # k = 3, no smoothing: weights are the softmax of cosine similarities, summed per label
    v, ir = unit(visible), unit(infrared)
    p = softmax(v @ ir.T)
    expected = []
    for row in p:
        top = np.argsort(-row, kind="stable")[:3]
        votes = {}
        for j in top:
            votes[infrared_labels[j]] = votes.get(infrared_labels[j], 0) + row[j]
        expected.append(max(votes, key=votes.get))
    assert unify_labels(visible, infrared, infrared_labels, k=3, smooth=False).tolist() == expected


def test_smoothing_follows_the_visible_neighbourhood():
    """A visible sample whose transferred label disagrees with its two visible neighbours is
    overruled by their votes (k = 3, itself included)."""
    infrared = [[1.0, 0.0], [0.0, 1.0]]
    visible = [[1.0, 0.0], [0.99, 0.14], [0.6, 0.8], [0.0, 1.0], [0.1, 0.99]]
    raw = unify_labels(visible, infrared, [0, 1], k=1, smooth=False)
    smoothed = unify_labels(visible, infrared, [0, 1], k=3)
    assert raw.tolist() == [0, 0, 1, 1, 1]
    # sample 2 (0.6, 0.8): its 3 nearest visible samples are itself, 4 and 3 -> label 1 stays;
    # sample 1's nearest are itself, 0 and 2 -> labels 0, 0, 1 -> 0
    assert smoothed.tolist() == [0, 0, 1, 1, 1]


def reference_clu(visible, infrared, labels, k, homogeneous):
    """Dense re-statement of the CLU steps, one visible row at a time."""
    v, ir = unit(visible), unit(infrared)
    classes = int(max(labels)) + 2
    y = np.eye(classes)[np.asarray(labels) + 1]
    p = softmax(v @ ir.T)
    keep = np.zeros_like(p)
    for i, row in enumerate(p):
        top = np.argsort(-row, kind="stable")[:min(k, len(row))]
        keep[i, top] = row[top]
    transferred = np.argmax(keep @ y, axis=1)
    s = v @ v.T
    if homogeneous == "softmax":
        s = softmax(s)
    w = np.zeros_like(s)
    for i, row in enumerate(s):
        top = np.argsort(-row, kind="stable")[:min(k, len(row))]
        w[i, top] = 1.0 if homogeneous == "uniform" else row[top]
    return np.argmax(w @ np.eye(classes)[transferred], axis=1) - 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 25), homogeneous=st.sampled_from(["uniform", "softmax"]),
       block=st.sampled_from([None, 7]))
def test_unify_labels_matches_the_dense_statement(seed, k, homogeneous, block):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6))
    ir_ids, v_ids = rng.integers(0, 4, 30), rng.integers(0, 4, 25)
    infrared = centres[ir_ids] + 0.7 * rng.normal(size=(30, 6))
    visible = centres[v_ids] + 0.7 * rng.normal(size=(25, 6)) + 0.5   # a modality offset
    labels = np.where(rng.random(30) < 0.2, -1, ir_ids)
    saved = association._BLOCK_ELEMENTS
    try:
        if block:  # several row blocks must give the same labels
            association._BLOCK_ELEMENTS = block * 30
        out = unify_labels(visible, infrared, labels, k=k, homogeneous=homogeneous)
    finally:
        association._BLOCK_ELEMENTS = saved
    expected = reference_clu(visible, infrared, labels, k, homogeneous)
    np.testing.assert_array_equal(out, expected)   # float64 in both: exact
    assert out.dtype == np.int64 and out.min() >= -1 and out.max() <= labels.max()


def test_unify_labels_errors():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        unify_labels(np.ones((2, 2)), np.ones((2, 2)), [0, 1], k=0)
    with pytest.raises(ValueError, match="homogeneous must be one of"):
        unify_labels(np.ones((2, 2)), np.ones((2, 2)), [0, 1], homogeneous="paper")
    with pytest.raises(ValueError, match="dimension 2 but infrared_features 3"):
        unify_labels(np.ones((2, 2)), np.ones((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="infrared_labels has 1 entries but 2"):
        unify_labels(np.ones((2, 2)), np.ones((2, 2)), [0])
    with pytest.raises(ValueError, match=">= 0 or -1"):
        unify_labels(np.ones((2, 2)), np.ones((2, 2)), [0, -3])
    assert unify_labels(np.ones((2, 2)), np.ones((2, 2)), [-1, -1]).tolist() == [-1, -1]
