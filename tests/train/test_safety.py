"""Safe to embed, train side: pickle-free checkpoints, protected run directories,
checked options with exit status 2, and the portable backbone every run writes."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.tiny import tiny_argv
from timm_reid.train import main, parse_args
from timm_reid.train.checkpoint import load_checkpoint
from timm_reid.train.config import check_args
from timm_reid.train.errors import CheckpointError, ConfigError
from timm_reid.train.pipeline import prepare_run_dir

REPO = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": REPO}


class _Hostile:
    """Unpickling this creates ``marker`` (through ``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_checkpoint(path, marker):
    torch.save({"args": {"model": "test_convnext"}, "model": {}, "payload": _Hostile(marker)}, path)
    assert not marker.exists()
    return path


@pytest.fixture(scope="module")
def tiny_run(market_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("safety") / "run"
    result = main(parse_args(tiny_argv(run, "--dataset", "market1501", "--root", str(market_dir))))
    return run, result


def test_hostile_checkpoint_refused_by_load_and_resume(tmp_path):
    marker = tmp_path / "marker"
    path = _hostile_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint(path)
    run = tmp_path / "run"
    run.mkdir()
    _hostile_checkpoint(run / "last.pth", marker)
    with pytest.raises(CheckpointError, match="last.pth"):
        main(parse_args(["--resume", str(run), "--threads", "1"]))
    assert not marker.exists()


def test_hostile_checkpoint_refused_by_create_model(tmp_path):
    from timm_reid import create_model

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Hostile(marker)}, path)
    with pytest.raises(Exception) as info:
        create_model("test_convnext", num_classes=0, checkpoint_path=str(path))
    assert not marker.exists(), "create_model(checkpoint_path=) unpickled the file"
    assert info.type is not AttributeError


def test_hostile_checkpoint_refused_by_evaluate_cli(tmp_path):
    marker = tmp_path / "marker"
    path = _hostile_checkpoint(tmp_path / "evil.pth", marker)
    proc = subprocess.run([sys.executable, "-m", "timm_reid.evaluate_cli", "--checkpoint", str(path), "--threads", "1"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2 and "evil.pth" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint\n" * 3, "truncated"])
def test_unreadable_checkpoint_names_the_file(tiny_run, tmp_path, content):
    run, _ = tiny_run
    if content == "truncated":
        content = (run / "final.pth").read_bytes()[:5000]
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"broken\.pth is not a readable timm-reid checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("names", [["config.yaml", "metrics.jsonl"], ["final.pth", "final_metrics.json"],
                                   ["notes.txt"]])
def test_output_folder_with_files_is_refused_unless_overwrite(tmp_path, names):
    run = tmp_path / "run"
    run.mkdir()
    for name in names:
        (run / name).write_text("user content\n")
    args = parse_args(["--output", str(run)])
    with pytest.raises(FileExistsError, match=names[0].replace(".", r"\.")):
        prepare_run_dir(args, resuming=False)
    assert all((run / n).read_text() == "user content\n" for n in names)
    prepare_run_dir(parse_args(["--output", str(run), "--overwrite"]), resuming=False)
    assert (run / "config.yaml").read_text() != "user content\n"
    assert ("notes.txt" not in names) or (run / "notes.txt").is_file()  # not a run file: kept


def test_resume_refuses_flags_it_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match=r"--lr, --rounds"):
        parse_args(["--resume", str(tmp_path), "--rounds", "10", "--lr", "0.5", "--threads", "1"])
    parse_args(["--resume", str(tmp_path), "--threads", "1", "--no-progress", "--device", "cpu"])


@pytest.mark.parametrize("text, match", [
    ("rounds: 1.5\n", "rounds.*int"),
    ("aibn: 3\n", "aibn.*list"),
    ("stages: intra\n", "stages.*list"),
    ("stages: [intra, outer]\n", "outer.*one of"),
    ("center_features: 1\n", "true/false"),
    ("lr: fast\n", "lr.*float"),
    ("roundz: 3\n", "roundz"),
])
def test_yaml_values_are_checked_like_flags(tmp_path, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        parse_args(["--config", str(cfg)])


@pytest.mark.parametrize("argv, match", [
    (["--lr", "-0.1"], "--lr"), (["--lr", "nan"], "--lr"), (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"), (["--margin", "-0.3"], "--margin"), (["--margin", "nan"], "--margin"),
])
def test_bad_numbers_fail_before_any_work(argv, match):
    with pytest.raises(ConfigError, match=match):
        check_args(parse_args(argv))


def test_cluster_counts_larger_than_the_data_fail_before_training(market_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="--inter-clusters 500 exceeds the 92 training images"):
        main(parse_args(tiny_argv(run, "--dataset", "market1501", "--root", str(market_dir), "--inter-clusters", "500")))
    assert not run.exists()  # refused before the run folder got any file (so before the initial evaluation)


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "-1"], "--lr must be"),
    (["--dataset", "market"], "market1501"),
    (["--aibn-gate", "0.2"], "--aibn-gate"),
])
def test_cli_errors_are_one_paragraph_with_status_2(tmp_path, argv, needle):
    proc = subprocess.run([sys.executable, "-m", "timm_reid.train", "--output", str(tmp_path / "r"), *argv],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_device_defaults_to_cuda_when_available():
    assert parse_args([]).device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_run_writes_a_portable_backbone_with_the_runs_features(tiny_run, market_dir, tmp_path):
    run, result = tiny_run
    log = (run / "log.txt").read_text()
    assert "train" in log and "92" in log  # dataset.summary() counts in the log
    script = f"""
import json, torch
import timm_reid
from timm_reid.data import build_dataset, build_transforms
from timm_reid.evaluation import evaluate
from timm_reid.train.features import extract
torch.set_num_threads(1)
model = timm_reid.load_backbone({str(run)!r})
h, w = model.timm_reid_backbone["input_size"]
data = build_dataset("market1501", {str(market_dir)!r})
f, p, c = extract(model, data.query + data.gallery, transform=build_transforms(h, w, train=False),
                  batch_size=64, workers=0)
torch.save(torch.as_tensor(f), {str(tmp_path / "features.pt")!r})
nq = len(data.query)
m = evaluate(query_features=torch.as_tensor(f[:nq]), gallery_features=torch.as_tensor(f[nq:]), q_pids=p[:nq],
             g_pids=p[nq:], q_camids=c[:nq], g_camids=c[nq:])
print(json.dumps({{"mAP": float(m["mAP"]), "size": [h, w], "training": model.training}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["size"] == [64, 32] and out["training"] is False
    assert math.isclose(out["mAP"], result["final"]["mAP"], abs_tol=1e-6)

    from timm_reid.data import build_dataset
    from timm_reid.train.pipeline import build_net_from_args, build_transforms
    from timm_reid.train.features import extract

    state = load_checkpoint(run / "final.pth")
    import argparse
    args = argparse.Namespace(**state["args"])
    net = build_net_from_args(args, state["num_cameras"], initial_weights=False)
    net.set_heads(state["head_sizes"])
    net.load_state_dict(state["model"])
    data = build_dataset("market1501", market_dir)
    own, _, _ = extract(net, data.query + data.gallery, transform=build_transforms(64, 32)[1], batch_size=64, workers=0)
    torch.testing.assert_close(torch.load(tmp_path / "features.pt"), torch.as_tensor(own), rtol=1e-5, atol=1e-6)
