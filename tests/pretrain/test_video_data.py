"""Synthetic street video and the video-crop layout loader."""
import filecmp
import json
import os

import pytest
from PIL import Image

from timm_reid.data.video import VideoConfig, generate_video, load_video_crops, main, read_tracks

TINY_VIDEO = dict(num_videos=2, num_frames=8, people_per_frame=3.0, track_length=(3, 6), image_size=(32, 16))


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("video") / "v"
    meta = generate_video(root, **TINY_VIDEO)
    return root, meta


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, (cmp.left_only, cmp.diff_files)
    match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert not mismatch and not errors
    for sub in cmp.common_dirs:
        _same_tree(os.path.join(a, sub), os.path.join(b, sub))


def test_same_seed_gives_bitwise_equal_files_and_another_seed_differs(tmp_path, tiny_video):
    root, _ = tiny_video
    generate_video(tmp_path / "again", **TINY_VIDEO)
    _same_tree(str(root), str(tmp_path / "again"))
    generate_video(tmp_path / "other", **{**TINY_VIDEO, "seed": 5})
    a = load_video_crops(root).crops[0].path
    b = load_video_crops(tmp_path / "other").crops[0].path
    assert open(a, "rb").read() != open(b, "rb").read()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".video-")]  # no temporary folder left


def test_counts_tracks_and_layout(tiny_video):
    root, meta = tiny_video
    crops = load_video_crops(root)
    assert meta["counts"]["crops"] == len(crops.crops) and len(crops.videos) == 2
    assert json.loads((root / "meta.json").read_text())["config"] == VideoConfig(**TINY_VIDEO).to_json()
    tracks = read_tracks(root, crops)
    assert len(tracks) == len(crops.crops) and meta["counts"]["tracks"] == len(set(tracks))
    for v in range(2):
        frames = crops.frames(v)
        by_frame = [{tracks[i] for i in idx} for idx in frames.values()]
        assert all(len(s) == len(idx) for s, idx in zip(by_frame, frames.values()))  # one crop per person
        assert all(len(s) <= VideoConfig().max_people for s in by_frame)
        # People enter and leave: the set of tracks changes over the video.
        assert len({frozenset(s) for s in by_frame}) > 1
    # Tracks never cross videos (different videos, different people).
    assert not {tracks[i] for i, c in enumerate(crops.crops) if c.video == 0} & \
        {tracks[i] for i, c in enumerate(crops.crops) if c.video == 1}
    with Image.open(crops.crops[0].path) as im:
        assert im.size == (16, 32)


def test_generator_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_video(tmp_path, **TINY_VIDEO)
    with pytest.raises(ValueError, match="num_frames"):
        VideoConfig(num_frames=1)
    with pytest.raises(ValueError, match="unknown synthetic video option"):
        generate_video(tmp_path / "x", cameras=3)


def _layout(tmp_path, names):
    for name in names:
        path = tmp_path / "videos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".jpg", ".jpeg", ".png"):
            Image.new("RGB", (8, 16), (10, 20, 30)).save(path)
        else:
            path.write_text("not an image")
    return tmp_path


def test_loader_reads_user_layout(tmp_path):
    root = _layout(tmp_path, ["cam2/10_1.png", "cam2/10_0.jpg", "cam1/000003_00.jpeg", "cam2/2_0.jpg"])
    crops = load_video_crops(root)
    assert crops.videos == ["cam1", "cam2"]
    assert [(c.video, c.frame, c.det) for c in crops.crops] == [(0, 3, 0), (1, 2, 0), (1, 10, 0), (1, 10, 1)]
    assert crops.frames(1) == {2: [1], 10: [2, 3]}


@pytest.mark.parametrize("names, message", [
    (["a/1_0.jpg", "a/frame1.jpg", "a/1_x.jpg"], r"2 file\(s\).*a/1_x.jpg"),
    (["a/1_0.jpg", "a/1_0.png"], "same frame and detection"),
    (["a/1_0.txt"], "do not fit"),
])
def test_loader_names_bad_files(tmp_path, names, message):
    with pytest.raises(ValueError, match=message):
        load_video_crops(_layout(tmp_path, names))


def test_loader_errors_on_missing_stray_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="videos/<video>/<frame>_<det>.jpg"):
        load_video_crops(tmp_path / "nothing")
    root = _layout(tmp_path, ["a/1_0.jpg"])
    (root / "videos" / "loose.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="loose.jpg"):
        load_video_crops(root)
    (root / "videos" / "loose.jpg").unlink()
    (root / "videos" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"\['empty'\].*hold no crops"):
        load_video_crops(root)


def test_cli_writes_and_refuses(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "v"), "--num-videos", "1", "--num-frames", "3", "--image-size", "32", "16"]) == 0
    assert "1 videos" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "v")])
    assert exc.value.code == 2


def test_default_counts_match_the_docstring():
    # Planning only (no drawing): the same tracks and detections generate_video writes.
    from timm_reid.data.video import _frames, _plan_tracks

    config = VideoConfig()
    crops, tracks = 0, set()
    for v in range(config.num_videos):
        for people in _frames(config, _plan_tracks(config, v)):
            crops += len(people)
            tracks |= {p.track for p in people}
    assert (config.num_videos, config.num_frames, crops, len(tracks)) == (48, 40, 6351, 479)
