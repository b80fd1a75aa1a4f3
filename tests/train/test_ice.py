"""ICE: each loss against an independent formula (float64, loops), proxies, the momentum-encoder
rule, sparse DBSCAN == dense DBSCAN, and tiny end-to-end runs with resume."""
import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tests.train.tiny import TINY_DATA, interrupt_step
from timm_reid.distributed import LOCAL
from timm_reid.factory import create_model
from timm_reid.train import ice, main, parse_args
from timm_reid.train.checkpoint import load_checkpoint
from timm_reid.train.context import OptimOptions
from timm_reid.train.losses import (hard_instance_loss, proxy_agnostic_loss, proxy_cross_camera_loss,
                                    soft_consistency_loss)
from timm_reid.train.model import ReIDNet


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _log_softmax(values):
    values = [float(v) for v in values]
    top = max(values)
    z = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - z for v in values]


# ------------------------------------------------------------------------------------------ losses

def test_agnostic_proxy_loss_is_label_smoothed_cross_entropy():
    f, centers = _unit(6, 5, 0), _unit(4, 5, 1) * 0.8
    targets = torch.tensor([0, 1, 2, 3, 0, 2])
    got = proxy_agnostic_loss(f, centers, targets, tau=0.5, label_smoothing=0.1)
    want = 0.0
    for i in range(6):
        logp = _log_softmax([(f[i] @ centers[k]) / 0.5 for k in range(4)])
        q = [0.9 * (k == int(targets[i])) + 0.1 / 4 for k in range(4)]
        want += -sum(qk * lk for qk, lk in zip(q, logp)) / 6
    assert got.item() == pytest.approx(want, rel=1e-10)


def _cross_camera_reference(f, targets, camids, proxies, labels, tau, num_negatives):
    per_camera = {}
    for i in range(len(f)):
        sims = [float(f[i] @ p) for p in proxies]
        pos = [j for j in range(len(proxies)) if labels[j] == targets[i]]
        others = sorted((j for j in range(len(proxies)) if labels[j] != targets[i]), key=lambda j: -sims[j])
        chosen = pos + others[:num_negatives]
        logp = _log_softmax([sims[j] / tau for j in chosen])
        loss = -sum(logp[:len(pos)]) / len(pos)
        per_camera.setdefault(int(camids[i]), []).append(loss)
    return sum(sum(v) / len(v) for v in per_camera.values())


@pytest.mark.parametrize("num_negatives", [2, 50])  # 50: more than the negatives there are
def test_cross_camera_proxy_loss_against_loops(num_negatives):
    # Proxies: cluster 0 seen by cameras 0, 1, 2; cluster 1 by camera 1 only; cluster 2 by 0 and 2;
    # camera 3 holds no proxy at all (its images were outliers), yet a batch sample comes from it.
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    proxies = _unit(6, 8, 2)
    f = _unit(7, 8, 3)
    targets = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    camids = torch.tensor([0, 1, 1, 2, 3, 0, 3])
    got = proxy_cross_camera_loss(f, targets, camids, proxies, labels, tau=0.07, num_negatives=num_negatives)
    want = _cross_camera_reference(f, targets, camids, proxies, labels, 0.07, num_negatives)
    assert got.item() == pytest.approx(want, rel=1e-9)


def _hard_reference(q, k, targets, tau):
    total = 0.0
    for i in range(len(q)):
        sims = [float(q[i] @ k[j]) for j in range(len(k))]
        hard = min(sims[j] for j in range(len(k)) if targets[j] == targets[i])
        neg = [sims[j] for j in range(len(k)) if targets[j] != targets[i]]
        total += -_log_softmax([hard / tau] + [s / tau for s in neg])[0]
    return total / len(q)


def test_hard_instance_loss_against_loops_with_ties():
    q, k = _unit(8, 6, 4), _unit(8, 6, 5)
    k[3] = k[2]  # identity 1 has two equal momentum features: a tie for the hardest positive
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    got = hard_instance_loss(q, k, targets, tau=0.1)
    assert got.item() == pytest.approx(_hard_reference(q, k, targets, 0.1), rel=1e-10)


@settings(max_examples=20, deadline=None)
@given(p=st.integers(2, 5), k=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_hard_instance_loss_property(p, k, seed):
    q, m = _unit(p * k, 4, seed), _unit(p * k, 4, seed + 1)
    targets = torch.arange(p).repeat_interleave(k)
    got = hard_instance_loss(q, m, targets, tau=0.1)
    assert got.item() == pytest.approx(_hard_reference(q, m, targets, 0.1), rel=1e-9)


def test_soft_consistency_loss_is_batch_mean_kl():
    f, m, w = _unit(5, 4, 6), _unit(5, 4, 7), _unit(5, 4, 8)
    got = soft_consistency_loss(f, m, w, tau=0.4)
    want = 0.0
    for i in range(5):
        logp = _log_softmax([float(f[i] @ m[j]) / 0.4 for j in range(5)])
        logt = _log_softmax([float(w[i] @ w[j]) / 0.4 for j in range(5)])
        want += sum(math.exp(t) * (t - s) for t, s in zip(logt, logp)) / 5
    assert got.item() == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------------------------------------ proxies, EMA

def test_proxies_are_direct_means_without_outliers():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, -1, -1, 2, 0, 1, 2, 2, 0, -1, 1, 0, 2, 1, 0])
    camids = np.array([0, 1, 0, 0, 1, 2, 0, 1, 2, 2, 1, 2, 2, 0, 1, 0, 0, 2, 1, 1])
    centers, cams, cam_labels = ice.build_proxies(feats, labels, camids)
    for j in range(3):
        np.testing.assert_allclose(centers[j].numpy(), feats[labels == j].mean(0), rtol=1e-6)
    expected = [(j, c) for j in range(3) for c in range(3) if ((labels == j) & (camids == c)).any()]
    assert cam_labels.tolist() == [j for j, _ in expected]
    for row, (j, c) in enumerate(expected):
        mean = feats[(labels == j) & (camids == c)].mean(0)
        np.testing.assert_allclose(cams[row].numpy(), mean / np.linalg.norm(mean), rtol=1e-5)


def _tiny_net():
    return ReIDNet(create_model("test_convnext", num_classes=0, aibn=(3, 4), tnorm=(1,), num_cameras=3))


def test_ema_update_follows_the_formula_and_leaves_buffers():
    torch.manual_seed(0)
    online, momentum = _tiny_net(), _tiny_net()
    before = copy.deepcopy(momentum)
    ice.ema_update(momentum, online, 0.9)
    for (name, m), o, b in zip(momentum.named_parameters(), online.parameters(), before.parameters()):
        torch.testing.assert_close(m, 0.9 * b + 0.1 * o, msg=name)
    for (name, m), b in zip(momentum.named_buffers(), before.buffers()):
        assert torch.equal(m, b), name


def _trainer(net):
    ctx = SimpleNamespace(make_net=lambda: copy.deepcopy(net), device="cpu", batch_size=8, num_instances=2, dist=LOCAL,
                          optim=OptimOptions(opt="adamw", lr=1e-3, backbone_lr_mult=1.0, weight_decay=5e-4,
                                             momentum=0.9))
    args = parse_args(["--method", "ice", "--seed", "0", "--ema", "0.9"])
    return ice.Trainer(ctx, args)


def test_momentum_buffers_come_from_its_own_train_mode_forwards():
    """Rule: parameters are the EMA of the online ones; buffers (AIBN running stats, TNorm
    per-camera stats) are updated by the momentum encoder's own forwards, with camera ids."""
    torch.manual_seed(0)
    trainer = _trainer(_tiny_net())
    twin = copy.deepcopy(trainer.net).train()
    g = torch.Generator().manual_seed(1)
    views = tuple(torch.randn(8, 3, 64, 32, generator=g) for _ in range(3))
    targets, camids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    centers, proxies = _unit(4, trainer.net.num_features, 2).float(), _unit(6, trainer.net.num_features, 3).float()
    online_before = copy.deepcopy(trainer.online)
    losses = trainer.train_step(views, targets, camids, centers, proxies, torch.tensor([0, 0, 1, 2, 3, 3]))
    assert all(math.isfinite(v) for v in losses.values())
    with torch.no_grad():
        twin(views[2], camids=camids)
        twin(views[1], camids=camids)
    for (name, m), t in zip(trainer.net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(m, t, msg=name)
    for (name, m), t, o in zip(trainer.net.named_parameters(), twin.parameters(), trainer.online.parameters()):
        torch.testing.assert_close(m, 0.9 * t + 0.1 * o, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(online_before.parameters(), trainer.online.parameters()))


def test_outliers_never_reach_a_batch(monkeypatch):
    torch.manual_seed(0)
    trainer = _trainer(_tiny_net())
    records = [SimpleNamespace(pid=0, camid=i % 3, _replace=lambda pid, i=i: SimpleNamespace(pid=pid, camid=i % 3,
                                                                                            index=i))
               for i in range(24)]
    labels = np.array([i // 4 if i % 5 else -1 for i in range(24)])
    seen = {}
    monkeypatch.setattr(ice, "ImageDataset", lambda recs, transform: seen.setdefault("recs", recs))
    monkeypatch.setattr(ice, "DataLoader", lambda *a, **k: [(None, torch.tensor([0]), torch.tensor([0]), None)])
    monkeypatch.setattr(trainer, "train_step", lambda images, targets, *a: {"loss": 0.0})
    trainer.ctx.dataset = SimpleNamespace(train=records)
    trainer.ctx.train_tf = trainer.ctx.test_tf = None
    trainer.ctx.workers, trainer.ctx.progress = 0, False
    trainer._features, trainer._camids = np.eye(24, dtype=np.float32), np.arange(24) % 3
    trainer.opts = ice.Options(**{**trainer.opts.__dict__, "iters": 1})
    trainer.train_epoch(0, labels)
    assert sorted(r.index for r in seen["recs"]) == [i for i in range(24) if labels[i] >= 0]
    assert all(r.pid >= 0 for r in seen["recs"])


# ------------------------------------------------------------------------------------------ DBSCAN

@pytest.mark.parametrize("seed, eps, k1", [(0, 0.5, 10), (1, 0.6, 15), (2, 0.3, 8)])
def test_sparse_dbscan_equals_dense_dbscan(seed, eps, k1):
    from sklearn.cluster import DBSCAN

    from timm_reid.cluster import dbscan_jaccard, jaccard_graph, rerank

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(15, 16))
    feats = np.concatenate([centres[rng.integers(0, 15, 200)] + 0.35 * rng.normal(size=(200, 16)),
                            rng.normal(size=(30, 16)) * 2]).astype(np.float32)
    dense = rerank(features=feats, k1=k1, k2=4, lambda_value=0.0).numpy().astype(np.float64)
    want = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
    got = dbscan_jaccard(feats, eps=eps, min_samples=4, k1=k1, k2=4, chunk_size=37)
    assert len(set(want)) > 3 and (want == -1).any()  # a non-trivial partition with outliers
    np.testing.assert_array_equal(got, want)
    graph = jaccard_graph(feats, eps=eps, k1=k1, k2=4)
    assert graph.nnz == int((dense <= eps).sum())  # every kept entry, zeros included


# ------------------------------------------------------------------------------------------ end to end

def ice_argv(output, *extra):
    return ["--method", "ice", "--preset", "ice-demo", "--output", str(output), "--model", "test_convnext",
            "--epochs", "1", "--iters", "3", "--batch-size", "16", "--num-instances", "4", "--k1", "6",
            "--test-batch-size", "64", "--threads", "1", "--no-progress", "--no-plots", *extra]


def _check_ice_run(run, epochs, memory="aware"):
    result = json.loads((run / "final_metrics.json").read_text())
    for which in ("initial", "final"):
        for key in ("mAP", "rank1"):
            assert 0.0 <= result[which][key] <= 1.0
    assert result["method"] == "ice"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, epochs + 1))
    for key in ("ice_clusters", "ice_outliers", "ice_agnostic", "ice_hard", "ice_soft", "ice_ari"):
        assert key in lines[-1], key
    assert ("ice_cross" in lines[-1]) == (memory == "aware")
    assert math.isfinite(lines[-1]["ice_loss"])
    assert (run / "backbone.safetensors").is_file() and (run / "final.pth").is_file()
    return result


def test_tiny_ice_run_on_market_layout_with_aibn_tnorm(market_dir, tmp_path):
    run = tmp_path / "run"
    main(parse_args(ice_argv(run, "--dataset", "market1501", "--root", str(market_dir), "--aibn", "3", "4",
                             "--tnorm", "1", "2")))
    _check_ice_run(run, 1)
    state = load_checkpoint(run / "final.pth")
    assert state["method"] == "ice" and state["head_sizes"] == [] and "online" in state


def test_tiny_ice_run_on_synthetic_data(tmp_path):
    run = tmp_path / "run"
    main(parse_args(ice_argv(run, "--synthetic-identities", str(TINY_DATA["num_identities"]),
                             "--synthetic-test-identities", str(TINY_DATA["num_test_identities"]),
                             "--synthetic-cameras", str(TINY_DATA["num_cameras"]), "--memory", "agnostic")))
    _check_ice_run(run, 1, memory="agnostic")


def test_ice_resume_equals_uninterrupted_run(market_dir, tmp_path, monkeypatch):
    argv = ["--dataset", "market1501", "--root", str(market_dir), "--epochs", "2", "--seed", "4"]
    full = main(parse_args(ice_argv(tmp_path / "full", *argv)))
    run = tmp_path / "resumed"
    real_step = interrupt_step(monkeypatch, ice.Trainer, at=2)  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        main(parse_args(ice_argv(run, *argv)))
    assert load_checkpoint(run / "last.pth")["next"] == [1, 0]
    monkeypatch.setattr(ice.Trainer, "step", real_step)
    resumed = main(parse_args(["--resume", str(run), "--threads", "1", "--no-progress"]))
    for which in ("initial", "final"):
        for key in ("mAP", "rank1", "same_camera_top1"):
            assert resumed[which][key] == pytest.approx(full[which][key], abs=1e-6), (which, key)
    a, b = load_checkpoint(tmp_path / "full" / "final.pth"), load_checkpoint(run / "final.pth")
    for part in ("model", "online"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-5, atol=1e-6, msg=f"{part}.{k}")
