"""Bad models, options, checkpoint files and data are refused before the run directory gets a file:
one paragraph on stderr, exit status 2, and the folder left as it was."""
import os
import stat

import pytest

from tests.train.tiny import TINY_DATA, tiny_argv
from timm_reid.data.synthetic import SyntheticConfig, generate_synthetic
from timm_reid.train.pipeline import cli


def _refused(argv, capsys, *, match):
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m timm_reid.train: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one paragraph
    assert match in err, err
    return err


@pytest.mark.parametrize("extra, match", [
    (["--model", "convnext_atoo"], "--model convnext_atoo at 64x32: RuntimeError: Unknown model (convnext_atoo)"),
    (["--aibn", "5"], "aibn stage 5 is out of range"),
    (["--model", "vit_tiny_patch16_224", "--aibn"], "does not know where the stages of VisionTransformer are"),
    (["--synthetic-cameras", "1"], "num_cameras=1 must be >= 2"),
    (["--aibn", "4", "--height", "32", "--width", "32"], "need at least 2 spatial positions"),
])
def test_bad_model_and_data_options_write_nothing(tmp_path, capsys, extra, match):
    run = tmp_path / "run"
    _refused(tiny_argv(run, *extra), capsys, match=match)
    assert not run.exists()


def test_a_truncated_checkpoint_is_refused_before_any_file(tmp_path, capsys):
    bad = tmp_path / "cut.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    run = tmp_path / "run"
    _refused(tiny_argv(run, "--checkpoint-path", str(bad)), capsys, match="cut.pth is not a readable checkpoint")
    assert not run.exists()


def test_replace_entry_weights_into_the_default_blend_run_are_refused(tmp_path, capsys):
    import timm_reid

    model = timm_reid.create_model("test_convnext", num_classes=0, aibn=[1, 2], entry="replace")
    path = timm_reid.save_backbone(model, str(tmp_path / "isr" / "backbone.safetensors"), model_name="test_convnext",
                                   input_size=(64, 32))
    run = tmp_path / "run"
    _refused(tiny_argv(run, "--aibn", "1", "2", "--tnorm", "--checkpoint-path", path), capsys,
             match="entry: stored 'replace', this model 'blend'")
    assert not run.exists()


def test_empty_split_folders_and_data_the_method_cannot_use_write_nothing(tmp_path, capsys, market_dir):
    empty = tmp_path / "empty"
    for name in ("bounding_box_train", "query", "bounding_box_test"):
        (empty / name).mkdir(parents=True)
    run = tmp_path / "run"
    _refused(tiny_argv(run, "--dataset", "market1501", "--root", str(empty)), capsys, match="no .jpg images")
    _refused(tiny_argv(run, "--dataset", "market1501", "--root", str(market_dir), "--intra-clusters", "500"),
             capsys, match="--intra-clusters 500 exceeds the images of every camera")
    assert not run.exists()


def test_a_read_only_output_parent_is_refused(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    real_access = os.access  # as a non-root user sees it (root may write anywhere)
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(parent) else real_access(p, mode))
    try:
        _refused(tiny_argv(parent / "run"), capsys, match="permission denied")
    finally:
        parent.chmod(stat.S_IRWXU)


def test_overwrite_checks_the_data_it_keeps_before_deleting_anything(tmp_path, capsys):
    run = tmp_path / "run"
    generate_synthetic(run / "data", SyntheticConfig(seed=7, **TINY_DATA))  # another seed than the run's 0
    (run / "final_metrics.json").write_text("{}")
    _refused(tiny_argv(run, "--overwrite"), capsys, match="which --overwrite keeps")
    assert (run / "final_metrics.json").read_text() == "{}"
    assert sorted(os.listdir(run)) == ["data", "final_metrics.json"]


def test_a_truncated_image_is_one_paragraph_and_status_2(tmp_path, capsys, market_dir):
    import shutil

    root = tmp_path / "Market-1501"
    shutil.copytree(market_dir, root)
    victim = sorted((root / "query").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    _refused(tiny_argv(tmp_path / "run", "--dataset", "market1501", "--root", str(root)), capsys,
             match=f"cannot read image {victim}")


def test_a_dataset_with_one_camera_is_refused_before_any_file(tmp_path, capsys, market_dir):
    import re
    import shutil

    root = tmp_path / "Market-1501"
    shutil.copytree(market_dir, root)
    for image in sorted(root.rglob("*.jpg")):
        target = image.with_name(re.sub(r"_c\d", "_c1", image.name))
        if target.exists():
            image.unlink()
        else:
            image.rename(target)
    run = tmp_path / "run"
    _refused(tiny_argv(run, "--dataset", "market1501", "--root", str(root)), capsys, match="has 1 camera")
    assert not run.exists()
