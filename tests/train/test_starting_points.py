"""``--init isr|supervised-source``: pretrained once into the cache, reused after, recorded in config.yaml."""
import pytest
import yaml

from tests.train.tiny import TINY_DATA, tiny_argv
from timm_reid.train import main, parse_args, starting_points
from timm_reid.train.errors import ConfigError

SYNTHETIC = ["--synthetic-identities", str(TINY_DATA["num_identities"]),
             "--synthetic-test-identities", str(TINY_DATA["num_test_identities"]),
             "--synthetic-cameras", str(TINY_DATA["num_cameras"]), "--aibn", "--tnorm"]


def test_init_isr_pretrains_once_then_reuses_the_cached_backbone(tmp_path, monkeypatch):
    monkeypatch.setitem(starting_points.STARTING_POINTS, "isr",
                        {"method": "isr", "epochs": 1, "num_videos": 4, "num_frames": 8, "batch_size": 40})
    argv = [*SYNTHETIC, "--root", str(tmp_path / "data"), "--init", "isr", "--init-cache", str(tmp_path / "cache")]
    main(parse_args(tiny_argv(tmp_path / "first", *argv)))
    backbone = tmp_path / "cache" / "isr-test_convnext-64x32" / "backbone.safetensors"
    assert backbone.is_file()
    config = yaml.safe_load((tmp_path / "first" / "config.yaml").read_text())
    assert config["init"] == "isr" and config["checkpoint_path"] == str(backbone)

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the cached backbone should have been reused")

    monkeypatch.setattr("timm_reid.pretrain.pretrain", no_pretraining)
    second = main(parse_args(tiny_argv(tmp_path / "second", *argv)))
    first = __import__("json").loads((tmp_path / "first" / "final_metrics.json").read_text())
    assert second["initial"]["mAP"] == pytest.approx(first["initial"]["mAP"], abs=1e-9)  # same start


def test_init_refuses_a_second_source_of_weights(tmp_path):
    with pytest.raises(ConfigError, match="one source of initial weights"):
        main(parse_args(tiny_argv(tmp_path / "run", "--init", "isr", "--checkpoint-path", "x.safetensors")))


def test_calibrate_aibn_sets_the_statistics_before_the_first_evaluation(tmp_path):
    import torch

    argv = [*SYNTHETIC, "--root", str(tmp_path / "data"), "--rounds", "1", "--stages", "intra", "--intra-epochs", "0"]
    patched = ["--aibn", "3", "4", "--aibn-entry", "replace", "--aibn-gate-init", "1"]
    plain = main(parse_args(tiny_argv(tmp_path / "plain", *argv, *patched)))
    calibrated = main(parse_args(tiny_argv(tmp_path / "cal", *argv, *patched, "--calibrate-aibn", "40",
                                           "--calibrate-aibn-affine")))
    assert "AIBN calibrated on 40 training images (statistics and affine)" in (tmp_path / "cal" / "log.txt").read_text()
    assert calibrated["initial"]["mAP"] != plain["initial"]["mAP"]
    state = torch.load(tmp_path / "cal" / "final.pth", weights_only=True)["model"]
    means = [v for k, v in state.items() if k.endswith("running_mean") and "stages.2" in k]
    assert means and all(v.abs().sum() > 0 for v in means)  # LayerNorm had none: calibrated, not zeros


def test_calibrate_aibn_needs_aibn_layers(tmp_path):
    with pytest.raises(ConfigError, match="needs AIBN layers"):
        main(parse_args(tiny_argv(tmp_path / "run", *SYNTHETIC, "--calibrate-aibn", "8")))
