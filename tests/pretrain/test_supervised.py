"""Supervised source pretraining: schedule and loss formulas, end to end, resume, CLI errors."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import timm_reid
from timm_reid.pretrain.__main__ import cli
from timm_reid.pretrain.engine import lr_at
from timm_reid.pretrain.heads import batch_hard_triplet

from .conftest import TINY_MODEL, TINY_SOURCE

REPO = str(Path(__file__).resolve().parents[2])


def _argv(output, root, *extra):
    return ["--method", "supervised", "--output", str(output), "--root", str(root), "--epochs", "2",
            *TINY_SOURCE, *TINY_MODEL, *extra]


def test_lr_schedule_is_linear_warmup_then_cosine():
    total, warmup, peak = 50, 10, 1e-3
    for step in range(total):
        if step < warmup:
            expected = peak * (step + 1) / warmup
        else:
            expected = peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert lr_at(step, total=total, warmup=warmup, peak=peak) == pytest.approx(expected, rel=1e-12)


def test_batch_hard_triplet_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 4, 4])  # pid 3 has no positive: skipped
    terms = []
    for a in range(10):
        pos = [torch.dist(x[a], x[j]) for j in range(10) if j != a and labels[j] == labels[a]]
        neg = [torch.dist(x[a], x[j]) for j in range(10) if labels[j] != labels[a]]
        if pos and neg:
            terms.append(torch.relu(max(pos) - min(neg) + 0.3))
    expected = torch.stack(terms).mean()
    assert batch_hard_triplet(x, labels, margin=0.3).item() == pytest.approx(expected.item(), rel=1e-9)


def test_supervised_end_to_end_then_train_starts_from_it(tmp_path, source_root):
    run = tmp_path / "run"
    assert cli(_argv(run, source_root)) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and not list(run.glob("*.tmp"))
    model = timm_reid.load_backbone(str(run))
    record = model.timm_reid_backbone
    assert record["model_name"] == "test_convnext" and record["input_size"] == [64, 32]
    assert record["extra"]["method"] == "supervised" and record["extra"]["trained_with"]["margin"] == 0.3
    assert 0.0 <= record["extra"]["final"]["source_test"]["mAP"] <= 1.0
    state = torch.load(run / "last.pth", map_location="cpu", weights_only=True)  # pickle-free
    assert state["epoch"] == 2
    # The reference pipeline starts from the file (patched with AIBN/TNorm by the demo preset).
    proc = subprocess.run(
        [sys.executable, "-m", "timm_reid.train", "--preset", "demo", "--output", str(tmp_path / "train"),
         "--model", "test_convnext", "--checkpoint-path", str(run / "backbone.safetensors"),
         "--synthetic-identities", "12", "--synthetic-test-identities", "8", "--synthetic-cameras", "3",
         "--rounds", "1", "--intra-epochs", "1", "--inter-epochs", "1", "--intra-clusters", "8",
         "--inter-clusters", "14", "--intra-batch-size", "8", "--batch-size", "16", "--eval-every", "0",
         "--threads", "1", "--no-progress", "--no-plots"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "train" / "final_metrics.json").is_file()


def test_resume_reproduces_the_uninterrupted_run(tmp_path, source_root, monkeypatch):
    from timm_reid.pretrain import engine

    assert cli(_argv(tmp_path / "full", source_root)) == 0
    saves = []
    real_save = engine.atomic_save

    def interrupt_after_first_epoch(obj, path):
        real_save(obj, path)
        saves.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "atomic_save", interrupt_after_first_epoch)
    assert cli(_argv(tmp_path / "cut", source_root)) == 130
    monkeypatch.setattr(engine, "atomic_save", real_save)
    assert len(saves) == 1 and not (tmp_path / "cut" / "backbone.safetensors").exists()
    assert cli(["--resume", str(tmp_path / "cut"), "--threads", "1", "--no-progress"]) == 0
    a = load_file(tmp_path / "full" / "backbone.safetensors")
    b = load_file(tmp_path / "cut" / "backbone.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("argv, message", [
    (["--method", "supervised", "--dataset", "market1501"], "needs --root"),
    (["--method", "supervised", "--batch-size", "10", "--num-instances", "4"], "multiple of --num-instances"),
    (["--method", "isr", "--dataset", "market1501"], "--data DIR"),
    (["--epochs", "2"], "--method is required"),
    (["--resume", "nowhere"], "no last.pth"),
])
def test_cli_errors_are_one_paragraph_and_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("nowhere", str(tmp_path / "nowhere")) for a in argv]
    if "--resume" not in argv:
        argv += ["--output", str(tmp_path / "run")]
    assert cli(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_refuses_a_folder_with_user_files(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert cli(["--method", "supervised", "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_a_run_that_failed_before_training_can_be_started_again(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--method", "isr", "--output", str(run), "--no-progress"]
    assert cli(argv + ["--data", str(tmp_path / "missing")]) == 2
    assert (run / "config.yaml").is_file() and not (run / "last.pth").exists()
    assert cli(argv + ["--data", str(tmp_path / "missing-too")]) == 2
    assert "missing-too" in capsys.readouterr().err  # not refused as a non-empty folder
