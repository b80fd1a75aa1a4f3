"""GUR: the ADC memories, the loss and the channel augmentation against formulas written here
(float64 loops), the trainer's dual-stream routing, and tiny end-to-end runs with resume."""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tests.train.tiny import interrupt_step
from timm_reid.data.layouts import INFRARED, VISIBLE
from timm_reid.train.gur_parts import GRAY_WEIGHTS, ChannelExchange, DomainMemory, centroids, modality_loss


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ------------------------------------------------------------------------------------------ memory

@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), batch=st.integers(1, 7),
       temp=st.sampled_from([0.05, 0.5, 1.0]), seed=st.integers(0, 10_000))
def test_domain_memory_loss_is_cross_entropy_within_the_target_domain(sizes, batch, temp, seed):
    d = 6
    blocks = [_unit(n, d, seed + i).numpy() for i, n in enumerate(sizes)]
    memory = DomainMemory(blocks, temp=temp)
    q = _unit(batch, d, seed + 99).float()
    rng = np.random.default_rng(seed)
    rows = torch.as_tensor(rng.integers(0, sum(sizes), batch))
    got = memory.losses(q, rows)
    flat = [row for b in blocks for row in b]
    domain = [i for i, n in enumerate(sizes) for _ in range(n)]
    for i in range(batch):
        r = int(rows[i])
        own = [j for j in range(len(flat)) if domain[j] == domain[r]]
        logits = {j: float(np.dot(q[i].double().numpy(), flat[j])) / temp for j in own}
        top = max(logits.values())
        expected = -(logits[r] - top - math.log(sum(math.exp(v - top) for v in logits.values())))
        assert float(got[i]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_domain_memory_rows_and_blocks():
    memory = DomainMemory([np.eye(3)[:2] * 3, np.eye(3)[2:]])
    assert len(memory) == 3 and memory.row(1, 0) == 2 and memory.row(0, 1) == 1
    torch.testing.assert_close(memory.block(0), torch.eye(3)[:2])  # rows are L2-normalised
    assert memory.domain_of_row.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="at least one centroid"):
        DomainMemory([np.zeros((0, 3))])


def test_momentum_update_is_sequential_and_renormalised():
    m0 = _unit(3, 4, 1)
    memory = DomainMemory([m0.numpy()], momentum=0.2)
    q = _unit(3, 4, 2)
    rows = [1, 1, 0]  # row 1 twice: the second update starts from the first's result
    memory.update(q.float(), torch.tensor(rows))
    expected = [list(map(float, r)) for r in m0]
    for x, r in zip(q, rows):
        v = [0.2 * a + 0.8 * float(b) for a, b in zip(expected[r], x)]
        norm = math.sqrt(sum(t * t for t in v))
        expected[r] = [t / norm for t in v]
    torch.testing.assert_close(memory.features.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_modality_loss_is_the_sum_of_the_two_modality_means():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    modality = torch.tensor([VISIBLE, VISIBLE, VISIBLE, INFRARED, INFRARED])
    assert float(modality_loss(losses, modality)) == pytest.approx(2.0 + 15.0)
    assert float(modality_loss(losses[:3], modality[:3])) == pytest.approx(2.0)  # one modality present


def test_centroids_are_normalised_means_without_outliers():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [0.0, 2.0]], dtype=np.float32)
    labels = np.array([0, 0, -1, 1])
    got = centroids(f, labels)
    np.testing.assert_allclose(got, [[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 1.0]], rtol=1e-6)


# ------------------------------------------------------------------------------------------ channel augmentation

def test_channel_exchange_copies_one_channel_or_the_luma():
    img = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0))
    for k in range(3):
        out = ChannelExchange.apply(img, k)
        for c in range(3):
            torch.testing.assert_close(out[c], img[k])
    gray = ChannelExchange.apply(img, 3)
    expected = GRAY_WEIGHTS[0] * img[0] + GRAY_WEIGHTS[1] * img[1] + GRAY_WEIGHTS[2] * img[2]
    for c in range(3):
        torch.testing.assert_close(gray[c], expected)
    assert img.shape == (3, 5, 4) and not torch.equal(img[0], img[1])  # the input is left alone


def test_channel_exchange_draws_every_choice_uniformly():
    torch.manual_seed(0)
    for gray, choices in ((False, 3), (True, 4)):
        counts = np.bincount([ChannelExchange(gray=gray).choice() for _ in range(4000)], minlength=4)
        assert (counts[choices:] == 0).all()
        assert np.all(np.abs(counts[:choices] / 4000 - 1 / choices) < 0.03), counts
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        ChannelExchange()(torch.rand(1, 4, 4))


# ------------------------------------------------------------------------------------------ trainer

def gur_args(vi_dir, output, *flags):
    """Options of a tiny GUR run (the gur-demo preset at test sizes)."""
    from timm_reid.train import parse_args

    return parse_args(gur_argv(vi_dir, output, *flags))


def gur_trainer(vi_dir, tmp_path, *flags):
    from timm_reid.train import gur
    from timm_reid.train.pipeline import build_context

    args = gur_args(vi_dir, tmp_path / "run", *flags)
    gur.check(args)
    ctx = build_context(args, str(tmp_path / "run"), fresh=True)
    gur.check_data(args, ctx.dataset)
    return gur.Trainer(ctx, args), ctx


def test_trainer_sends_each_modality_through_its_own_layers_only(vi_dir, tmp_path):
    from timm_reid.models.dual_stream import ModalityRouted

    trainer, ctx = gur_trainer(vi_dir, tmp_path, "--specific-stages", "1")
    assert trainer.infrared == [3, 4]  # cam4, cam5 of the layout (exp/infrared_cameras.txt)
    routed = [m for m in trainer.net.modules() if isinstance(m, ModalityRouted)]
    assert len(routed) >= 2 and all(m.camera_modality.tolist() == [0, 0, 0, 1, 1] for m in routed)
    seen = {VISIBLE: [], INFRARED: []}
    first = routed[0]
    hooks = [first.streams[m].register_forward_pre_hook(lambda mod, inp, m=m: seen[m].append(inp[0].detach().clone()))
             for m in (VISIBLE, INFRARED)]
    camids = torch.tensor([0, 3, 1, 4, 2, 3, 0, 4])
    modality = (camids >= 3).long()
    # every pixel of an image holds its modality's number: a stream that gets a foreign image sees it
    view = modality.float()[:, None, None, None].expand(8, 3, 64, 32).contiguous()
    memory = trainer._memory([np.eye(trainer.net.num_features, dtype=np.float32)[:4]])
    trainer.train_step(memory, view, view.clone(), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), camids, modality)
    for h in hooks:
        h.remove()
    assert torch.cat(seen[INFRARED]).eq(1).all() and torch.cat(seen[VISIBLE]).eq(0).all()
    # visible images twice (plain and channel-exchanged view), infrared once
    assert sum(len(x) for x in seen[VISIBLE]) == 8 and sum(len(x) for x in seen[INFRARED]) == 4
    raw, _, _, _ = ctx.clustering_features(trainer.net)  # extraction routes camera ids too
    assert raw.shape[0] == len(ctx.dataset.train)


def test_check_data_refuses_single_modality_data(market_dir, tmp_path):
    from timm_reid.data import build_dataset
    from timm_reid.train import gur
    from timm_reid.train.errors import ConfigError

    args = gur_args(market_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="both modalities.*sysumm01"):
        gur.check_data(args, build_dataset("market1501", market_dir))



# ------------------------------------------------------------------------------------------ end to end

def gur_argv(vi_dir, output, *extra):
    """A 1-2 epoch GUR run of seconds on the tiny VI data (the gur-demo preset at test sizes)."""
    return ["--method", "gur", "--preset", "gur-demo", "--dataset", "sysumm01", "--root", str(vi_dir),
            "--output", str(output), "--model", "test_convnext", "--batch-size", "8", "--num-instances", "2", "--k1", "5", "--k2", "2",
            "--camera-iters", "2", "--modality-iters", "2", "--joint-iters", "2", "--epochs", "1",
            "--clu-epochs", "1", "--clu-smooth-epochs", "0", "--threads", "1", "--no-progress", "--no-plots",
            "--test-batch-size", "64", *extra]


def _check_gur_run(run, epochs):
    import json

    result = json.loads((run / "final_metrics.json").read_text())
    for which in ("initial", "final"):
        for key in ("mAP", "rank1"):
            assert 0.0 <= result[which][key] <= 1.0
    assert result["method"] == "gur" and result["protocol"].startswith("sysumm01-all")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, epochs + 1))
    for key in ("gur_camera_clusters", "gur_modality_clusters", "gur_seconds"):
        assert key in lines[-1], key
    assert (run / "backbone.safetensors").is_file() and (run / "final.pth").is_file()
    return result


def test_tiny_gur_run_end_to_end_and_its_backbone_reloads(vi_dir, tmp_path, capsys):
    import timm_reid
    from timm_reid import evaluate_cli
    from timm_reid.train import main, parse_args

    run = tmp_path / "run"
    main(parse_args(gur_argv(vi_dir, run)))
    result = _check_gur_run(run, 1)
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(run / "final.pth")]) in (0, None)  # splits, then loads
    out = capsys.readouterr().out
    assert "sysumm01-all-single-shot" in out and f"mAP={100 * result['final']['mAP']:.1f}" in out
    backbone = timm_reid.load_backbone(str(run))
    assert backbone.timm_reid_backbone["dual_stream"]["infrared_cameras"] == [3, 4]
    x = torch.randn(2, 3, 64, 32)
    assert backbone(x, camids=torch.tensor([0, 3])).shape[0] == 2


def test_gur_resume_equals_uninterrupted_run(vi_dir, tmp_path, monkeypatch):
    from timm_reid.train import gur, main, parse_args
    from timm_reid.train.checkpoint import load_checkpoint

    argv = ["--epochs", "2", "--clu-epochs", "1", "--seed", "4"]
    full = main(parse_args(gur_argv(vi_dir, tmp_path / "full", *argv)))
    run = tmp_path / "resumed"
    real_step = interrupt_step(monkeypatch, gur.Trainer, at=2)  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        main(parse_args(gur_argv(vi_dir, run, *argv)))
    assert load_checkpoint(run / "last.pth")["next"] == [1, 0]
    monkeypatch.setattr(gur.Trainer, "step", real_step)
    resumed = main(parse_args(["--resume", str(run), "--threads", "1", "--no-progress"]))
    for which in ("initial", "final"):
        for key in ("mAP", "rank1"):
            assert resumed[which][key] == pytest.approx(full[which][key], abs=1e-6), (which, key)
    a, b = load_checkpoint(tmp_path / "full" / "final.pth"), load_checkpoint(run / "final.pth")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("flags, message", [
    (["--clu-smooth-epochs", "2", "--clu-epochs", "1"], "--clu-smooth-epochs 2 exceeds --clu-epochs 1"),
    (["--memory-momentum", "1.0"], r"--memory-momentum must lie in \[0, 1\)"),
    (["--modality-eps", "-1"], "--modality-eps must be auto or a finite number > 0"),
])
def test_bad_gur_options_are_refused_naming_the_flag(vi_dir, tmp_path, flags, message):
    from timm_reid.train.errors import ConfigError
    from timm_reid.train import gur

    with pytest.raises(ConfigError, match=message):
        gur.check(gur_args(vi_dir, tmp_path / "run", *flags))


def test_gur_without_visible_infrared_data_exits_2_naming_the_fix(tmp_path, capsys):
    from timm_reid.train.pipeline import cli

    with pytest.raises(SystemExit) as stop:
        cli(["--method", "gur", "--output", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset sysumm01 --root DIR" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _regdb_from(vi_dir, root, test_ids_of_trial):
    """The tiny synthetic VI data in the RegDB layout: its visible and infrared images, the same
    train identities in every trial and the given test identities per trial."""
    from timm_reid.data import INFRARED, load_sysumm01

    data = load_sysumm01(vi_dir, name="synthetic-vi")
    by_split = {"train": data.train, "test": list(data.query) + list(data.gallery)}
    (root / "idx").mkdir(parents=True)
    for trial, test_ids in test_ids_of_trial.items():
        for part, records in by_split.items():
            for modality, folder, name in ((0, "Visible", "visible"), (INFRARED, "Thermal", "thermal")):
                chosen = [r for r in records if (r.modality == INFRARED) == (modality == INFRARED)
                          and (part == "train" or r.pid in test_ids)]
                lines = []
                for k, r in enumerate(chosen):
                    rel = f"{folder}/{r.pid}/{k}.jpg"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    if not (root / rel).exists():
                        (root / rel).write_bytes(open(r.path, "rb").read())
                    lines.append(f"{rel} {r.pid}")
                (root / "idx" / f"{part}_{name}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.filterwarnings("ignore:regdb at")  # the tiny tree is not the published size
def test_gur_trains_and_is_scored_on_the_regdb_split_it_is_given(vi_dir, tmp_path, capsys):
    import json

    from timm_reid import evaluate_cli
    from timm_reid.data import load_sysumm01
    from timm_reid.train import main, parse_args

    test_ids = sorted({r.pid for r in load_sysumm01(vi_dir, name="synthetic-vi").query})
    regdb = _regdb_from(vi_dir, tmp_path / "RegDB", {1: test_ids, 2: test_ids[:3]})
    argv = gur_argv(regdb, tmp_path / "run", "--trial", "2")
    argv[argv.index("sysumm01")] = "regdb"
    result = main(parse_args(argv))
    assert result["protocol"] == "regdb-visible-to-thermal"
    queries = json.loads((tmp_path / "run" / "final_metrics.json").read_text())["final"]
    assert "trial: 2" in (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run" / "final.pth"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "regdb-visible-to-thermal" in out and f"mAP={100 * queries['mAP']:.1f}" in out
    assert re.search(r"query\s+3\s", out)  # trial 2's 3 test identities: the run's trial, read from its checkpoint


def test_trial_is_refused_where_there_is_no_regdb_split(vi_dir, tmp_path, capsys):
    from timm_reid.train.pipeline import cli

    with pytest.raises(SystemExit) as stop:
        cli(gur_argv(vi_dir, tmp_path / "run", "--trial", "2"))
    assert stop.value.code == 2
    assert "--trial 2 picks a RegDB split; --dataset sysumm01 has none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
