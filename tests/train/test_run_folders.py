"""One run per folder (a lock), and a run folder or ``--init`` cache that a killed data
generator left behind still starts."""
import json

import pytest

from tests.train.test_starting_points import SYNTHETIC
from tests.train.tiny import tiny_argv
from timm_reid._runlock import LOCK_FILE, RunLock
from timm_reid.pretrain import pretrain
from timm_reid.train import main, parse_args, starting_points
from timm_reid.train.errors import ConfigError

TINY_ISR = {"method": "isr", "epochs": 1, "num_videos": 4, "num_frames": 8, "batch_size": 40}


def _killed_generation(run):
    """What kill -9 during synthetic video generation leaves: the config and a temporary folder."""
    (run / ".video-k1ll3d").mkdir(parents=True)
    (run / ".video-k1ll3d" / "tracks.csv").write_text("video,frame,det,track\n")
    (run / "config.json").write_text("{}")


def test_init_cache_left_by_a_killed_generation_is_made_on_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setitem(starting_points.STARTING_POINTS, "isr", TINY_ISR)
    cache = tmp_path / "cache"
    _killed_generation(cache / "isr-test_convnext-64x32")
    argv = [*SYNTHETIC, "--root", str(tmp_path / "data"), "--init", "isr", "--init-cache", str(cache)]
    main(parse_args(tiny_argv(tmp_path / "run", *argv)))
    made = cache / "isr-test_convnext-64x32"
    assert (made / "backbone.safetensors").is_file()
    assert not [p.name for p in made.iterdir() if p.name.startswith(".video-")]


def test_a_pretraining_folder_in_use_is_refused_and_free_again_after(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(str(run)).acquire()  # another run writing there
    try:
        with pytest.raises(FileExistsError, match="is in use by another run"):
            pretrain("isr", output=str(run), num_videos=3, num_frames=6, epochs=1, batch_size=40,
                     model="test_convnext", height=64, width=32, threads=1, no_progress=True)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        lock.release()
    _killed_generation(run)  # and a killed generator's leftovers do not block the next start
    result = pretrain("isr", output=str(run), num_videos=3, num_frames=6, epochs=1, batch_size=40,
                      model="test_convnext", height=64, width=32, threads=1, no_progress=True)
    assert json.loads((run / "final_metrics.json").read_text())["epochs"] == result["epochs"] == 1


def test_init_while_another_run_makes_the_starting_point_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(starting_points.STARTING_POINTS, "isr", TINY_ISR)
    cache = tmp_path / "cache"
    lock = RunLock(str(cache / "isr-test_convnext-64x32")).acquire()
    try:
        argv = [*SYNTHETIC, "--root", str(tmp_path / "data"), "--init", "isr", "--init-cache", str(cache)]
        with pytest.raises(ConfigError, match=r"--init isr: making the starting point in .*cache.*in use by another"):
            main(parse_args(tiny_argv(tmp_path / "run", *argv)))
    finally:
        lock.release()


def test_a_training_folder_in_use_is_refused(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(str(run)).acquire()
    try:
        with pytest.raises(FileExistsError, match="is in use by another run"):
            main(parse_args(tiny_argv(run, *SYNTHETIC)))
    finally:
        lock.release()
