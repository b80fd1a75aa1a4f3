"""The run layer train and pretrain share (timm_reid/_run.py): seeds, run folders, resume rules,
config files; against formulas and folders written out here."""
import argparse
import os

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from timm_reid._run import (CHECKPOINT_FILE, ConfigError, RunFolder, derive_seed, refuse_flags_ignored_by_resume,
                            resumed_options, write_config)
from timm_reid._runlock import LOCK_FILE, RunLock
from timm_reid.pretrain.engine import epoch_seed as pretrain_epoch_seed
from timm_reid.train.checkpoint import stage_seed
from timm_reid.train.ice import epoch_seed as ice_epoch_seed


@given(seed=st.integers(0, 2**40), step=st.integers(0, 10_000), stage=st.sampled_from(["intra", "inter"]))
def test_the_one_seed_formula_gives_every_seed_runs_were_made_with(seed, step, stage):
    """The formulas of the runs written before the run layer, spelled out: resumed and repeated
    runs must draw the same numbers."""
    assert stage_seed(seed, step, stage) == (seed * 1_000_003 + step * 97 + {"intra": 0, "inter": 1}[stage] * 7
                                             + 1) % 2**31
    assert ice_epoch_seed(seed, step) == (seed * 1_000_003 + step * 131 + 11) % 2**31
    assert pretrain_epoch_seed(seed, step) == (seed * 1_000_003 + step * 7919 + 17) % 2**31
    assert 0 <= derive_seed(seed, ((step, 3),), salt=5) < 2**31


TRAIN = RunFolder(run_files=("config.yaml", "last.pth", "log.txt"), has_overwrite=True)
PRETRAIN = RunFolder(run_files=("config.yaml", "last.pth"), restartable=frozenset({"config.yaml", "video-data"}),
                     writer="timm_reid.pretrain")


def test_a_folder_with_files_is_refused_naming_them_and_the_ways_out(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty: it already holds files \(notes.txt\); choose a new or "
                                              r"empty --output, or pass --overwrite"):
        TRAIN.prepare(str(tmp_path), resuming=False)
    (tmp_path / CHECKPOINT_FILE).write_text("x")
    with pytest.raises(FileExistsError, match=f"continue it with --resume {tmp_path}"):
        PRETRAIN.prepare(str(tmp_path), resuming=False)
    with pytest.raises(FileExistsError, match="not empty") as info:
        PRETRAIN.prepare(str(tmp_path), resuming=False)
    assert "--overwrite" not in str(info.value)  # pretraining has no --overwrite
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_removes_only_the_run_files_after_the_checks(tmp_path):
    for name in ("config.yaml", "log.txt", "notes.txt"):
        (tmp_path / name).write_text(name)
    lock = RunLock(str(tmp_path))
    try:
        TRAIN.prepare(str(tmp_path), resuming=False, overwrite=True, lock=lock)
        assert sorted(os.listdir(tmp_path)) == sorted([LOCK_FILE, "notes.txt"])
    finally:
        lock.release()


def test_a_run_stopped_before_its_first_checkpoint_restarts(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "video-data").mkdir()
    (tmp_path / ".video-k1ll3d").mkdir()  # a killed generator's temporary folder: removed under the lock
    lock = RunLock(str(tmp_path))
    try:
        assert PRETRAIN.prepare(str(tmp_path), resuming=False, lock=lock) == str(tmp_path)
    finally:
        lock.release()
    assert not (tmp_path / ".video-k1ll3d").exists() and (tmp_path / "video-data").is_dir()


def test_resuming_needs_a_checkpoint_and_a_folder_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no last.pth there; is it a run folder of timm_reid.pretrain"):
        PRETRAIN.prepare(str(tmp_path), resuming=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        TRAIN.check(str(tmp_path / "file"), resuming=False)


def test_resume_refuses_the_flags_it_would_ignore_and_keeps_how_to_run():
    refuse_flags_ignored_by_resume(None, {"lr", "epochs"}, ("threads",))  # not resuming: nothing refused
    refuse_flags_ignored_by_resume("runs/x", {"resume", "threads"}, ("threads",))
    with pytest.raises(ConfigError, match=r"so these flags would be ignored: --epochs, --lr\. Drop them \(only "
                                          r"--threads, --no-progress may change on resume\)"):
        refuse_flags_ignored_by_resume("runs/x", {"lr", "epochs", "threads"}, ("threads", "no_progress"))
    given_now = argparse.Namespace(resume="runs/x", threads=4, lr=9.0, output=None)
    options = resumed_options({"lr": 0.1, "threads": 1, "output": "old"}, given_now,
                              defaults={"lr": 1.0, "added_later": 7}, runtime=("threads",))
    assert vars(options) == {"lr": 0.1, "threads": 4, "added_later": 7, "output": "runs/x", "resume": "runs/x"}


def test_config_files_are_yaml_with_plain_values(tmp_path):
    write_config({"b": (3, 4), "a": None, "c": "x"}, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.index("a:") < text.index("b:") < text.index("c:")  # sorted by name
    assert yaml.safe_load(text) == {"a": None, "b": [3, 4], "c": "x"}
    assert not list(tmp_path.glob("*.tmp"))
