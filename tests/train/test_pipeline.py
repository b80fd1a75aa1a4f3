"""End-to-end runs of the reference pipeline on tiny configurations (seconds each)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.tiny import TINY_DATA, tiny_argv
from timm_reid.train import iics, main, parse_args
from timm_reid.train.checkpoint import load_checkpoint

REPO = str(Path(__file__).resolve().parents[2])


def _check_run_dir(run, *, rounds=1):
    result = json.loads((run / "final_metrics.json").read_text())
    for which in ("initial", "final"):
        for key in ("mAP", "rank1", "same_camera_top1"):
            assert 0.0 <= result[which][key] <= 1.0, (which, key, result[which][key])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, rounds + 1))
    last = lines[-1]
    for key in ("intra_clusters", "intra_loss", "inter_clusters", "inter_ce_loss", "inter_triplet_loss",
                "inter_ari", "inter_nmi", "inter_purity", "test", "intra_seconds", "inter_seconds"):
        assert key in last, key
    assert math.isfinite(last["intra_loss"]) and math.isfinite(last["inter_ce_loss"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["rounds"] == rounds and config["preset"] == "demo"
    for name in ("final.pth", "last.pth", "log.txt"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp"))
    return result


def test_tiny_run_on_market_layout_then_evaluate_cli(market_dir, tmp_path):
    run = tmp_path / "run"
    argv = [a for a in tiny_argv(run, "--dataset", "market1501", "--root", str(market_dir)) if a != "--no-plots"]
    result = main(parse_args(argv))
    assert result == json.loads((run / "final_metrics.json").read_text())
    _check_run_dir(run)
    for plot in ("curves.png", "cmc.png", "embedding.png"):
        assert (run / plot).stat().st_size > 0, plot
    state = load_checkpoint(run / "final.pth")
    assert state["args"]["dataset"] == "market1501" and state["head_sizes"] == [14]

    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "timm_reid.evaluate_cli", "--checkpoint", str(run / "final.pth"),
                           "--data", str(market_dir), "--threads", "1", "--output", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    assert "test: mAP=" in proc.stdout
    evaluated = json.loads(out.read_text())["test"]
    assert evaluated["mAP"] == pytest.approx(result["final"]["mAP"], abs=1e-6)

    proc = subprocess.run([sys.executable, "-m", "timm_reid.evaluate_cli", "--checkpoint", str(tmp_path / "nope.pth")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode != 0 and "nope.pth" in proc.stderr


def test_tiny_run_generates_synthetic_data_with_iids_options(tmp_path):
    run = tmp_path / "run"
    main(parse_args(tiny_argv(run, "--synthetic-identities", str(TINY_DATA["num_identities"]),
                              "--synthetic-test-identities", str(TINY_DATA["num_test_identities"]),
                              "--synthetic-cameras", str(TINY_DATA["num_cameras"]), "--tnorm", "1", "2", "3",
                              "--self-distill", "1", "--convert-prob", "0.5", "--camera-aggregate", "--drop-singletons")))
    assert (run / "data" / "meta.json").is_file()
    _check_run_dir(run)


def test_resume_equals_uninterrupted_run(market_dir, tmp_path, monkeypatch):
    argv = ["--dataset", "market1501", "--root", str(market_dir), "--rounds", "2", "--seed", "5"]
    full = main(parse_args(tiny_argv(tmp_path / "full", *argv)))

    real_inter = iics.run_inter_stage
    calls = []

    def interrupt_in_round_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_inter(*args, **kwargs)

    run = tmp_path / "resumed"
    monkeypatch.setattr(iics, "run_inter_stage", interrupt_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        main(parse_args(tiny_argv(run, *argv)))
    assert (run / "interrupted.pth").is_file()
    assert load_checkpoint(run / "last.pth")["next"] == [1, 1]  # round 2, inter stage
    monkeypatch.setattr(iics, "run_inter_stage", real_inter)
    resumed = main(parse_args(["--resume", str(run), "--threads", "1", "--no-progress"]))

    for which in ("initial", "final"):
        for key in ("mAP", "rank1", "same_camera_top1"):
            assert resumed[which][key] == pytest.approx(full[which][key], abs=1e-6), (which, key)
    a = load_checkpoint(tmp_path / "full" / "final.pth")["model"]
    b = load_checkpoint(run / "final.pth")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_existing_run_dir_is_not_overwritten(market_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"")
    with pytest.raises(FileExistsError, match="--resume"):
        main(parse_args(tiny_argv(run, "--dataset", "market1501", "--root", str(market_dir))))
