"""timm_reid.evaluation.evaluate_split, the one split evaluation: the whole path (records ->
flip-averaged features -> protocol) against features and metrics computed here, per protocol."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.data.test_visible_infrared import write_sysu
from tests.evaluation.test_visible_infrared import brute_force_sysu, brute_force_trial_gallery, cosine
from tests.train.tiny import TINY_DATA
from timm_reid.data import build_transforms, load_sysumm01, read_image
from timm_reid.data.synthetic import SyntheticConfig, generate_synthetic, load_synthetic
from timm_reid.evaluation import PROTOCOLS, evaluate_split

pytestmark = pytest.mark.filterwarnings("ignore::timm_reid.data.published.DatasetCountWarning")


class Pool(nn.Module):
    """A parameter-free 'model': mean colour of the top and bottom halves (6 features)."""

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, (2, 1)).flatten(1)


def features_here(records, transform):
    """Flip-averaged, L2-normalised features of every record, one image at a time."""
    rows = []
    for r in records:
        x = transform(read_image(r.path))[None]
        f = 0.5 * (Pool()(x) + Pool()(torch.flip(x, dims=[3])))
        rows.append(torch.nn.functional.normalize(f, dim=1)[0])
    return torch.stack(rows).numpy()


def market_map(dist, q_pids, q_cams, g_pids, g_cams):
    """mAP and rank-1 with same-identity same-camera gallery images removed (per query loop)."""
    aps, top1 = [], []
    for i in range(len(dist)):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        order = np.argsort(dist[i][keep], kind="stable")
        hits = g_pids[keep][order] == q_pids[i]
        if hits.any():
            ranks = np.flatnonzero(hits) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
            top1.append(bool(hits[0]))
    return np.mean(aps), np.mean(top1)


def labels(records):
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def test_reid_split_matches_features_and_metrics_computed_here(tmp_path):
    cfg = dict(TINY_DATA, seed=4)
    generate_synthetic(tmp_path / "d", SyntheticConfig(**cfg))
    dataset = load_synthetic(tmp_path / "d", **cfg)
    transform = build_transforms(64, 32, train=False)
    out = evaluate_split(Pool(), dataset, transform=transform, batch_size=7)
    assert set(out) == {"test"} | ({"val"} if getattr(dataset, "val", None) else set())
    qf, gf = features_here(dataset.query, transform), features_here(dataset.gallery, transform)
    expected_map, expected_rank1 = market_map(cosine(qf, gf), *labels(dataset.query), *labels(dataset.gallery))
    assert out["test"]["mAP"] == pytest.approx(expected_map, abs=1e-6)
    assert out["test"]["rank1"] == pytest.approx(expected_rank1, abs=1e-6)
    assert 0 <= out["test"]["same_camera_top1"] <= 1


def _colour_every_image(root, seed):
    rng = np.random.default_rng(seed)
    for path in sorted(root.rglob("*.jpg")):
        Image.fromarray(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysumm01_split_matches_the_protocol_computed_here(tmp_path, mode):
    root = write_sysu(tmp_path / "sysu")
    _colour_every_image(root, seed=1)
    dataset = load_sysumm01(root)
    transform = build_transforms(8, 4, train=False)
    out = evaluate_split(Pool(), dataset, transform=transform, protocol="sysumm01", mode=mode, trials=3)
    assert set(out) == {"test"} and out["test"]["protocol"] == f"sysumm01-{mode}-single-shot"
    qf, gf = features_here(dataset.query, transform), features_here(dataset.gallery, transform)
    cameras = {"all": (0, 1, 3, 4), "indoor": (0, 1)}[mode]
    maps, rank1s = [], []
    for trial in range(3):
        picked = brute_force_trial_gallery(dataset.gallery, trial, cameras)
        q_pids, q_cams = labels(dataset.query)
        g_pids, g_cams = labels([dataset.gallery[i] for i in picked])
        ap, _, cmc = brute_force_sysu(cosine(qf, gf[picked]), q_pids, q_cams, g_pids, g_cams)
        maps.append(ap)
        rank1s.append(cmc[0])
    assert out["test"]["mAP"] == pytest.approx(np.mean(maps), abs=1e-6)
    assert out["test"]["rank1"] == pytest.approx(np.mean(rank1s), abs=1e-6)
    assert isinstance(out["test"]["cmc"], list)  # plain values: JSON-ready


def test_unknown_protocols_and_options_are_named():
    empty = type("D", (), {"query": [], "gallery": []})()
    with pytest.raises(ValueError, match="unknown evaluation protocol 'market'.*" + ", ".join(PROTOCOLS)):
        evaluate_split(Pool(), empty, transform=None, protocol="market")
    with pytest.raises(TypeError, match="reid protocol takes no options, got mode"):
        evaluate_split(Pool(), empty, transform=None, mode="all")
