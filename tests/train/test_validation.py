"""Option values that cannot work are refused before any work, naming the option and the fix."""
import os

import pytest

from tests.pretrain.conftest import TINY_MODEL
from timm_reid.evaluate_cli import main as evaluate_main
from timm_reid.pretrain.__main__ import cli as pretrain_cli
from timm_reid.train import parse_args
from timm_reid.train.checkpoint import load_checkpoint
from timm_reid.train.config import check_args
from timm_reid.train.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("argv, match", [
    (["--threads", "-1"], "--threads -1 must be >= 1"),
    (["--threads", "0"], "--threads 0 must be >= 1"),  # was silently all cores
    (["--workers", "-1"], "--workers -1 must be >= 0"),
    (["--pad", "-5"], "--pad must be >= 0"),
    (["--last-stride", "0"], "last_stride=0 is not valid"),
    (["--aibn-gate-init", "5"], "gate_init must be a number in [0, 1]"),
    (["--device", "bogus"], "--device 'bogus' is not a torch device"),
    (["--momentum", "5"], "--momentum 5.0 must lie in [0, 1)"),
    (["--dist-timeout", "inf"], "--dist-timeout inf must be a finite number"),
])
def test_train_values_that_cannot_work_are_refused(argv, match):
    with pytest.raises(ConfigError) as error:
        check_args(parse_args(argv))
    assert match in str(error.value)


def test_yaml_numbers_read_as_text_are_explained(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\n")
    with pytest.raises(ConfigError, match="YAML read 1e-3 as text.*1.0e-3"):
        parse_args(["--config", str(path)])


def test_random_bytes_are_not_called_python_objects(tmp_path):
    path = tmp_path / "last.pth"
    path.write_bytes(os.urandom(256).replace(b"\x80", b"\x00"))
    with pytest.raises(CheckpointError, match="not a torch file") as error:
        load_checkpoint(path)
    assert "Python objects" not in str(error.value)


@pytest.mark.parametrize("method, extra, match", [  # each flag with a method that has it
    ("supervised", ["--margin", "-1"], "--margin must be >= 0"),
    ("isr", ["--gamma", "nan"], "--gamma nan must be a finite number"),
    ("isr", ["--tau", "nan"], "--tau nan must be a finite number"),
    ("supervised", ["--threads", "0"], "--threads 0 must be >= 1"),
    ("supervised", ["--device", "bogus"], "is not a torch device"),
])
def test_pretrain_values_that_cannot_work_are_refused(tmp_path, capsys, method, extra, match):
    assert pretrain_cli(["--method", method, "--output", str(tmp_path / "r"), *TINY_MODEL, *extra]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_pretrain_does_not_accept_abbreviated_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain_cli(["--method", "isr", "--output", str(tmp_path / "r"), "--epoch", "5"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --epoch" in capsys.readouterr().err


def test_pretrain_device_defaults_to_cuda_when_available():
    import torch

    from timm_reid.pretrain.config import get_args_parser

    assert get_args_parser().parse_args([]).device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_evaluate_refuses_an_output_json_in_a_missing_folder_before_evaluating(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "m.json"
    assert evaluate_main(["--checkpoint", str(tmp_path / "absent.pth"), "--output-json", str(missing)]) == 2
    assert "does not exist or is not writable" in capsys.readouterr().err
