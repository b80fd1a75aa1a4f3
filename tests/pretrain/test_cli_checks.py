"""The pretraining command line refuses bad options before its run folder gets a file: one
paragraph on stderr, exit status 2."""
import pytest

from tests.pretrain.conftest import TINY_MODEL
from timm_reid.pretrain.__main__ import cli


def _refused(argv, capsys, match):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert match in err, err


@pytest.mark.parametrize("extra, match", [
    (["--model", "convnext_atoo"], "Unknown model (convnext_atoo)"),
    (["--aibn", "5"], "aibn stage 5 is out of range"),
    (["--model", "vit_tiny_patch16_224"], "at 64x32"),  # a ViT cannot take 64x32 images
    (["--aibn", "4", "--height", "32", "--width", "32"], "need at least 2 spatial positions"),
])
def test_bad_models_write_nothing(tmp_path, capsys, extra, match):
    run = tmp_path / "run"
    _refused(["--method", "isr", "--output", str(run), *TINY_MODEL, *extra], capsys, match)
    assert not run.exists()
