"""ISR's pieces against independent formulas: matching, reliability loss, queue, step plan."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.pretrain.contrastive import (FeatureQueue, match_frames, max_weight_matching, queue_loss,
                                            reliability_loss)
from timm_reid.pretrain.video_tasks import plan_steps


def _brute_force_best(weights):
    """Largest total weight over every way of matching min(m, n) pairs."""
    m, n = weights.shape
    if m <= n:
        return max(sum(weights[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(n), m))
    return _brute_force_best(weights.T)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 5), data=st.data())
def test_matching_equals_brute_force(m, n, data):
    # Small integers make ties frequent: several optimal matchings, all of the same total.
    values = data.draw(st.lists(st.integers(-2, 2), min_size=m * n, max_size=m * n))
    weights = np.array(values, dtype=np.float64).reshape(m, n)
    rows, cols = max_weight_matching(weights)
    assert len(rows) == min(m, n)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)  # one-to-one
    assert weights[rows, cols].sum() == pytest.approx(_brute_force_best(weights))


def test_match_frames_recovers_a_permutation_on_cosine():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, generator=g)
    perm = torch.tensor([2, 0, 3, 1])
    y = torch.cat([3.0 * x[perm] + 0.01 * torch.randn(4, 16, generator=g), torch.randn(2, 16, generator=g)])
    rows, cols = match_frames(x, y)  # scale of y does not matter: cosine
    assert dict(zip(rows.tolist(), cols.tolist())) == {int(perm[j]): j for j in range(4)}
    rows, cols = match_frames(y, x)  # more crops on the left: only 4 of them matched
    assert sorted(cols.tolist()) == [0, 1, 2, 3] and set(rows.tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="NaN"):
        max_weight_matching(np.array([[float("nan")]]))


def _reference_loss(anchors, candidates, targets, gamma, tau):
    """Eqs. 2-4 written out in float64 with Python loops."""
    p, losses0, losses = [], [], []
    for i in range(len(anchors)):
        logits = [float(anchors[i] @ candidates[j]) / tau for j in range(len(candidates))]
        pi = math.exp(logits[targets[i]]) / sum(math.exp(v) for v in logits)
        p.append(pi)
        losses0.append(-math.log(pi))
        losses.append(-(pi ** gamma) * math.log(pi))
    alpha = sum(losses0) / sum(losses)
    return alpha * sum(losses) / len(losses), alpha, p


@pytest.mark.parametrize("gamma", [0.0, 2.0, 6.0])
def test_reliability_loss_value_alpha_and_stopped_gradient(gamma):
    g = torch.Generator().manual_seed(1)
    anchors = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    candidates = F.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1)
    targets = torch.tensor([0, 3, 3, 6, 1])
    tau = 0.3
    loss, p = reliability_loss(anchors, candidates, targets, gamma=gamma, tau=tau)
    expected, alpha, p_ref = _reference_loss(anchors.detach(), candidates, targets.tolist(), gamma, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert p.tolist() == pytest.approx(p_ref, rel=1e-10)
    # With alpha and p^gamma constants, d loss / d log p_i = -alpha p_i^gamma / m.
    loss.backward()
    log_p = F.log_softmax(anchors @ candidates.t() / tau, 1).gather(1, targets[:, None]).squeeze(1)
    weights = torch.tensor([alpha * q ** gamma / 5 for q in p_ref], dtype=torch.float64)
    (grad,) = torch.autograd.grad(-(weights * log_p).sum(), anchors)
    torch.testing.assert_close(anchors.grad, grad, rtol=1e-10, atol=1e-12)
    if gamma > 0:  # letting the gradient flow through p^gamma would give another gradient
        anchors.grad = None
        lp = F.log_softmax(anchors @ candidates.t() / tau, 1).gather(1, targets[:, None]).squeeze(1)
        (-(alpha * lp.exp() ** gamma * lp).mean()).backward()
        assert not torch.allclose(anchors.grad, grad)


def test_gamma_zero_is_the_plain_contrastive_loss():
    g = torch.Generator().manual_seed(2)
    a, c = F.normalize(torch.randn(4, 6, generator=g), dim=1), F.normalize(torch.randn(5, 6, generator=g), dim=1)
    t = torch.tensor([1, 0, 4, 2])
    loss, _ = reliability_loss(a, c, t, gamma=0.0, tau=0.1)
    torch.testing.assert_close(loss, F.cross_entropy(a @ c.t() / 0.1, t))


def test_queue_is_fifo_oldest_first_and_keeps_the_newest():
    q = FeatureQueue(4, 1)
    q.push(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
    assert q.entries()[0].squeeze(1).tolist() == [1, 2]
    q.push(torch.tensor([[3.0], [4.0], [5.0]]), torch.tensor([1, 1, 2]))
    feats, videos = q.entries()
    assert feats.squeeze(1).tolist() == [2, 3, 4, 5] and videos.tolist() == [0, 1, 1, 2]
    q.push(torch.arange(6.0, 12.0)[:, None], torch.arange(6))  # more than fits: the newest 4
    assert q.entries()[0].squeeze(1).tolist() == [8, 9, 10, 11]
    q.push(torch.tensor([[12.0]]), torch.tensor([9]))
    assert q.entries()[0].squeeze(1).tolist() == [9, 10, 11, 12]
    restored = FeatureQueue(4, 1)
    restored.load_state_dict(q.state_dict())
    restored.push(torch.tensor([[13.0]]), torch.tensor([9]))
    assert restored.entries()[0].squeeze(1).tolist() == [10, 11, 12, 13]


def test_queue_loss_uses_only_other_videos_hardest_k():
    g = torch.Generator().manual_seed(3)
    q = FeatureQueue(16, 4)
    feats = F.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1).float()
    vids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    q.push(feats, vids)
    anchors = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    anchor_videos = torch.tensor([0, 3, 9])
    k = 3
    per_anchor = []
    for x, v in zip(anchors, anchor_videos.tolist()):
        sims = sorted((float(x @ f) for f, fv in zip(feats, vids.tolist()) if fv != v), reverse=True)[:k]
        per_anchor.append(sum(math.log1p(math.exp(s)) for s in sims) / len(sims))
    assert queue_loss(anchors, anchor_videos, q, k=k).item() == pytest.approx(sum(per_anchor) / 3, rel=1e-5)
    lonely = FeatureQueue(4, 4)
    lonely.push(feats[:2], torch.tensor([5, 5]))
    assert queue_loss(anchors[:1], torch.tensor([5]), lonely, k=2).item() == 0.0  # no other video yet


def test_step_plan_respects_delta_max_size_and_one_visit_per_step():
    rng = np.random.default_rng(0)
    frames_by_video = [{f: [1000 * v + 10 * f + d for d in range(3)] for f in range(0, 20, 2)} for v in range(5)]
    frames_by_video.append({0: [9999], 50: [9998]})  # no two frames within delta_max: never visited
    video_of = {i: v for v, frames in enumerate(frames_by_video) for crops in frames.values() for i in crops}
    frame_of = {i: f for frames in frames_by_video for f, crops in frames.items() for i in crops}
    steps = plan_steps(frames_by_video, visits=4, frames_per_video=3, delta_max=4, max_images=8, rng=rng)
    visits = {}
    for step in steps:
        assert len(step) == 3 and all(len(slot) <= 8 for slot in step)
        videos = {video_of[i] for slot in step for i in slot}
        for v in videos:
            visits[v] = visits.get(v, 0) + 1
            frames = {frame_of[i] for slot in step for i in slot if video_of[i] == v}
            assert 2 <= len(frames) <= 3 and max(frames) - min(frames) <= 4
            for slot in step:  # one frame of the video per super frame
                assert len({frame_of[i] for i in slot if video_of[i] == v}) <= 1
    assert visits == {v: 4 for v in range(5)}
