"""Options that would do nothing are refused with the reason, or warned about."""
import warnings

import pytest

import timm_reid
from tests.pretrain.conftest import TINY_MODEL
from tests.train.tiny import tiny_argv
from timm_reid.pretrain.__main__ import cli as pretrain_cli
from timm_reid.train import parse_args
from timm_reid.train.config import check_args
from timm_reid.train.errors import ConfigError
from timm_reid.train.pipeline import _warn_if_calibration_changes_nothing


def test_tnorm_in_transform_mode_without_conversion_warns(tmp_path):
    with pytest.warns(UserWarning, match="changes no output without conversion"):
        check_args(parse_args(tiny_argv(tmp_path, "--tnorm", "1", "2", "3")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_args(parse_args(tiny_argv(tmp_path, "--tnorm", "1", "--camera-aggregate")))
        check_args(parse_args(tiny_argv(tmp_path, "--tnorm", "1", "--tnorm-mode", "normalize")))


@pytest.mark.parametrize("argv, flag", [
    (["--method", "ice", "--rounds", "3"], "--rounds"),
    (["--method", "iics", "--epochs", "9"], "--epochs"),
    (["--method", "ice", "--self-distill", "1"], "--self-distill"),
])
def test_options_of_the_other_method_are_refused(argv, flag):
    with pytest.raises(ConfigError, match=f"{flag} belong\\(s\\) to another method than --method"):
        parse_args(argv)


def test_evaluation_options_of_a_method_group_stay_valid_for_every_method():
    assert parse_args(["--method", "ice", "--camera-aggregate"]).camera_aggregate


def test_a_config_file_holding_resume_and_other_options_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("resume: runs/old\nlr: 0.1\n")
    with pytest.raises(ConfigError, match="holds resume: runs/old and other options \\(lr\\)"):
        parse_args(["--config", str(path)])


@pytest.mark.parametrize("model, entry, warns", [
    ("test_convnext", "blend", True),  # LayerNorm base at blend 0: the start is the LayerNorm's
    ("test_convnext", "replace", False),
    ("resnet10t", "blend", False),  # a BatchNorm base reads the calibrated running statistics
])
def test_calibration_that_cannot_change_the_start_warns(model, entry, warns):
    backbone = timm_reid.create_model(model, num_classes=0, aibn=[3], entry=entry)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _warn_if_calibration_changes_nothing(backbone, refit=False)
    assert any("changed no output at the start" in str(w.message) for w in seen) == warns


def _pretrain_refused(argv, capsys, match):
    assert pretrain_cli(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err


def test_isr_with_one_image_per_super_frame_is_refused(tmp_path, capsys):
    _pretrain_refused(["--method", "isr", "--output", str(tmp_path / "r"), *TINY_MODEL, "--batch-size", "1"],
                      capsys, "one image has nothing to match")
    assert not (tmp_path / "r").exists()


def test_pretrain_resume_refuses_options_it_would_ignore(tmp_path, capsys):
    _pretrain_refused(["--resume", str(tmp_path), "--epochs", "5", "--lr", "0.5", "--threads", "1"], capsys,
                      "would be ignored: --epochs, --lr")
