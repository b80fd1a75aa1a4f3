import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_reid.data import build_dataset, load_market1501
from timm_reid.data.synthetic import (SyntheticConfig, generate_synthetic, load_synthetic,
                                      main, save_contact_sheet)

from .conftest import TINY_SYNTHETIC

FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def file_bytes(root):
    return {(folder, name): (Path(root) / folder / name).read_bytes()
            for folder in FOLDERS for name in sorted(os.listdir(Path(root) / folder))}


def test_layout_counts_and_meta(tiny_synthetic):
    root, meta = tiny_synthetic
    ds = load_market1501(root, name="synthetic")
    assert meta["counts"] == {"bounding_box_train": len(ds.train), "query": len(ds.query),
                              "bounding_box_test": len(ds.gallery)}
    with open(os.path.join(root, "meta.json")) as f:
        assert json.load(f)["config"] == SyntheticConfig(**TINY_SYNTHETIC).to_json()
    # 12 train ids in 2-3 of 3 cameras with 2-4 images each
    assert ds.num_train_pids == 12 and 12 * 2 * 2 <= len(ds.train) <= 12 * 3 * 4
    assert ds.num_cameras == 3
    with Image.open(ds.train[0].path) as im:
        assert (im.size, im.mode, im.format) == ((16, 32), "RGB", "JPEG")


def test_train_and_test_identities_are_disjoint(tiny_synthetic):
    root, _ = tiny_synthetic
    names = {folder: os.listdir(os.path.join(root, folder)) for folder in FOLDERS}
    pids = {folder: {int(n.split("_")[0]) for n in ns} for folder, ns in names.items()}
    assert pids["bounding_box_train"] == set(range(1, 13))
    assert pids["query"] <= pids["bounding_box_test"] - {0}
    assert pids["bounding_box_test"] == set(range(13, 21)) | {0}
    assert sum(n.startswith("0000_") for n in names["bounding_box_test"]) == 4


def test_every_query_has_a_cross_camera_match_and_one_query_per_camera(tiny_synthetic):
    ds = load_market1501(tiny_synthetic[0], name="synthetic")
    gallery = {(r.pid, r.camid) for r in ds.gallery}
    seen = [(r.pid, r.camid) for r in ds.query]
    assert len(seen) == len(set(seen))
    for pid, cam in seen:
        assert (pid, cam) in gallery  # the camera keeps a gallery image of the identity
        assert any(p == pid and c != cam for p, c in gallery)


def test_same_seed_gives_bitwise_equal_files(tmp_path, tiny_synthetic):
    root, _ = tiny_synthetic
    generate_synthetic(tmp_path / "again", **TINY_SYNTHETIC)
    assert file_bytes(tmp_path / "again") == file_bytes(root)
    assert (tmp_path / "again" / "meta.json").read_bytes() == Path(root, "meta.json").read_bytes()


def test_other_seed_gives_other_data(tmp_path, tiny_synthetic):
    generate_synthetic(tmp_path / "other", **{**TINY_SYNTHETIC, "seed": 4})
    assert file_bytes(tmp_path / "other") != file_bytes(tiny_synthetic[0])


def same_camera_top1(root):
    """Share of queries whose nearest gallery image (raw pixels, cosine) shares their camera."""
    ds = load_market1501(root)

    def features(records):
        x = np.stack([np.asarray(Image.open(r.path), np.float32).ravel() for r in records])
        x -= x.mean(1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    nearest = (features(ds.query) @ features(ds.gallery).T).argmax(1)
    return np.mean([ds.gallery[j].camid == q.camid for q, j in zip(ds.query, nearest)])


def test_style_strength_controls_camera_bias(tmp_path):
    """Naive features retrieve by camera at style 1 but not without camera style
    (chance = 1/4). Measured on the default-size dataset: 0.87 at 1, 0.24 at 0."""
    options = dict(seed=0, num_cameras=4, num_identities=1, num_test_identities=30,
                   num_distractors=0, image_size=(32, 16))
    generate_synthetic(tmp_path / "s0", style_strength=0.0, **options)
    generate_synthetic(tmp_path / "s1", style_strength=1.0, **options)
    assert same_camera_top1(tmp_path / "s1") > 0.6
    assert same_camera_top1(tmp_path / "s0") < 0.45


def test_refuses_to_overwrite(tiny_synthetic):
    with pytest.raises(FileExistsError, match="already holds a dataset.*meta.json"):
        generate_synthetic(tiny_synthetic[0], **TINY_SYNTHETIC)


@pytest.mark.parametrize("options, message", [
    (dict(num_cameras=1), "num_cameras=1 must be >= 2"),
    (dict(cameras_per_identity=(3, 2)), "cameras_per_identity=(3, 2)"),
    (dict(num_cameras=2, cameras_per_identity=(3, 4)), "lo <= num_cameras"),
    (dict(images_per_camera=(0, 2)), "images_per_camera=(0, 2)"),
    (dict(num_identities=9000, num_test_identities=1000), "<= 9999"),
    (dict(image_size=(8, 8)), "image_size=(8, 8)"),
    (dict(style_strength=-1), "style_strength=-1"),
    (dict(occlusion_p=2), "occlusion_p=2"),
    (dict(num_cameras=3, camera_weights=(1, 2)), "one finite weight > 0 per camera (3)"),
    (dict(num_cameras=2, camera_weights=(1, 0)), "camera_weights=(1.0, 0.0)"),
    (dict(bogus=1), "unknown synthetic dataset option(s) ['bogus']"),
])
def test_invalid_config(tmp_path, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_synthetic(tmp_path / "x", **options)
    assert not (tmp_path / "x").exists()


def test_load_synthetic_reuses_and_checks_config(tiny_synthetic):
    root, _ = tiny_synthetic
    ds = build_dataset("synthetic", root, **TINY_SYNTHETIC)
    assert ds.name == "synthetic" and ds.num_train_pids == 12
    with pytest.raises(ValueError, match="seed: stored 3 != requested 5"):
        load_synthetic(root, **{**TINY_SYNTHETIC, "seed": 5})


def test_load_synthetic_generates_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMM_REID_CACHE", os.fspath(tmp_path))
    options = dict(num_cameras=2, num_identities=2, num_test_identities=2, image_size=(16, 8))
    ds = build_dataset("synthetic", **options)
    (cache,) = os.listdir(tmp_path)
    assert cache.startswith("synthetic-") and ds.root == os.path.join(tmp_path, cache)
    assert build_dataset("synthetic", **options) == ds


def test_cli_and_contact_sheet(tmp_path, capsys):
    out, sheet = tmp_path / "cli", tmp_path / "sheet.png"
    assert main(["--out", str(out), "--seed", "1", "--num-cameras", "2", "--num-identities",
                 "3", "--num-test-identities", "2", "--image-size", "24", "12",
                 "--style-strength", "4", "--contact-sheet", str(sheet)]) == 0
    assert "generated" in capsys.readouterr().out
    config = json.loads((out / "meta.json").read_text())["config"]
    assert (config["image_size"], config["style_strength"], config["num_cameras"]) == (
        [24, 12], 4.0, 2)
    with Image.open(sheet) as im:
        assert im.size == (2 * 14 * 2, 3 * 26 * 2)  # 2 cameras x 3 identities, 2x scale
    with pytest.raises(SystemExit):
        main(["--out", str(out)])
    assert "already holds a dataset" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "timm_reid.data.synthetic", "--out", str(tmp_path / "m"),
         "--num-cameras", "2", "--num-identities", "1", "--num-test-identities", "1",
         "--image-size", "16", "8"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # in particular no runpy double-import warning
    assert sorted(os.listdir(tmp_path / "m")) == ["bounding_box_test", "bounding_box_train",
                                                   "meta.json", "query"]


def test_save_contact_sheet_grid(tiny_synthetic, tmp_path):
    ds = load_market1501(tiny_synthetic[0])
    save_contact_sheet(ds.query, tmp_path / "q.png", num_identities=3, scale=1)
    with Image.open(tmp_path / "q.png") as im:
        assert im.size == (3 * 18, 3 * 34)  # 3 cameras x 3 identities, 1 px border
        sheet = np.asarray(im)
    first = ds.query[0]  # pid 13, the smallest test pid, is the first row
    with Image.open(first.path) as tile:
        expected = np.asarray(tile)
    x0 = first.camid * 18
    assert np.abs(sheet[:32, x0:x0 + 16].astype(int) - expected).max() <= 2


def test_never_writes_among_other_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"is not empty \(notes.txt\).*new or empty folder"):
        generate_synthetic(folder, **TINY_SYNTHETIC)
    with pytest.raises(FileExistsError, match="is not empty"):
        load_synthetic(folder, **TINY_SYNTHETIC)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert generate_synthetic(tmp_path / "empty", **{**TINY_SYNTHETIC, "num_identities": 2,
                                                      "num_test_identities": 2})["counts"]


def _tree_digest(root):
    import hashlib

    h = hashlib.sha256()
    for folder in sorted(os.listdir(root)):
        path = Path(root) / folder
        for name in (sorted(os.listdir(path)) if path.is_dir() else [""]):
            h.update(f"{folder}/{name}".encode())
            h.update((path / name if name else path).read_bytes())
    return h.hexdigest()


def test_default_options_write_the_files_of_format_version_1(tmp_path):
    # Digest of every file (meta.json included) written by the generator before the later
    # options (camera_weights) existed: defaults must change no draw and no meta entry.
    generate_synthetic(tmp_path / "d", seed=3, num_cameras=3, num_identities=6, num_test_identities=4,
                       num_distractors=2, image_size=(32, 16))
    assert _tree_digest(tmp_path / "d") == "99c37d34ce44a8be77e3dc7e2aac9937742cf8a502aa9637127e22f9b06366d0"


def test_camera_weights_make_camera_sizes_uneven(tmp_path):
    options = dict(seed=1, num_cameras=4, num_identities=120, num_test_identities=2,
                   cameras_per_identity=(1, 2), images_per_camera=(1, 1), image_size=(16, 8),
                   num_distractors=0)
    counts = {}
    for name, weights in (("even", ()), ("uneven", (8, 4, 2, 1))):
        meta = generate_synthetic(tmp_path / name, camera_weights=weights, **options)
        assert ("camera_weights" in meta["config"]) == bool(weights)
        cams = [int(n.split("_c")[1][0]) - 1 for n in os.listdir(tmp_path / name / "bounding_box_train")]
        counts[name] = np.bincount(cams, minlength=4)
    assert counts["uneven"][0] > 2 * counts["uneven"][3]  # expected ratio ~3 (without replacement)
    assert counts["even"].max() < 2 * counts["even"].min()  # 43-55 per camera for seed 1
    # the stored weights are part of the config a reuse is checked against, both ways
    with pytest.raises(ValueError, match="camera_weights: stored"):
        load_synthetic(tmp_path / "uneven", **options)
    with pytest.raises(ValueError, match="camera_weights: stored None"):
        load_synthetic(tmp_path / "even", camera_weights=(8, 4, 2, 1), **options)


def test_cli_camera_weights(tmp_path):
    assert main(["--out", os.fspath(tmp_path / "c"), "--num-cameras", "2", "--num-identities", "3",
                 "--num-test-identities", "2", "--image-size", "16", "8", "--camera-weights", "3", "1"]) == 0
    with open(tmp_path / "c" / "meta.json") as f:
        assert json.load(f)["config"]["camera_weights"] == [3.0, 1.0]
