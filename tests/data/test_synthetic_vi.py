"""The synthetic visible-infrared generator (SYSU-MM01 layout)."""
import colorsys
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from timm_reid.data import INFRARED, VISIBLE, load_sysumm01
from timm_reid.data.synthetic import (VisibleInfraredConfig, _identity_of, _infrared_identity,
                                      generate_synthetic_vi, main)
from timm_reid.evaluation import evaluate

SMALL = dict(num_identities=20, num_test_identities=40, image_size=(32, 16))


@pytest.fixture(scope="module")
def vi_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vi") / "data"
    meta = generate_synthetic_vi(root, seed=5, **SMALL)
    return load_sysumm01(root, name="synthetic-vi"), meta


def pixels(record, grey=True):
    image = Image.open(record.path).convert("L" if grey else "RGB")
    return np.asarray(image, dtype=np.float32)


def test_layout_counts_and_modalities(vi_data):
    ds, meta = vi_data
    assert len(ds.train) == meta["counts"]["train"]
    assert len(ds.query) == meta["counts"]["test_infrared"]
    assert len(ds.gallery) == meta["counts"]["test_visible"]
    assert ds.num_cameras == 6
    assert {r.camid for r in ds.query} == {2, 5}   # SYSU-MM01's infrared cameras 3 and 6
    for split in (ds.train, ds.query + ds.gallery):
        seen = {}
        for r in split:
            seen.setdefault(r.pid, set()).add(r.modality)
        assert all(m == {VISIBLE, INFRARED} for m in seen.values())  # both modalities see everyone
    per_camera = {c: {r.pid for r in ds.train if r.camid == c} for c in range(6)}
    assert min(len(p) for p in per_camera.values()) < SMALL["num_identities"]  # cameras see part


def test_infrared_images_carry_no_hue_and_visible_ones_do(vi_data):
    ds, _ = vi_data
    for r in ds.train[::7]:
        x = pixels(r, grey=False)
        spread = np.abs(x - x.mean(axis=2, keepdims=True)).max()
        if r.modality == INFRARED:
            assert spread == 0, r.path                     # 3 equal channels, as SYSU-MM01 stores them
    saturation = [np.mean([colorsys.rgb_to_hsv(*(p / 255))[1] for p in pixels(r, grey=False).reshape(-1, 3)[::9]])
                  for r in ds.train[::11] if r.modality == VISIBLE]
    assert np.mean(saturation) > 0.2


def test_infrared_reflectance_does_not_follow_the_visible_colour():
    seed = 11
    visible = np.array([np.mean(_identity_of(seed, pid).top) for pid in range(1, 401)])
    infrared = np.array([_infrared_identity(seed, pid).top[0] for pid in range(1, 401)])
    assert abs(np.corrcoef(visible, infrared)[0, 1]) < 0.15
    assert infrared.std() > 40                         # but it varies between identities
    ident, ir = _identity_of(seed, 3), _infrared_identity(seed, 3)
    assert (ident.top_pattern, ident.bag, ident.hair_style, ident.width) == \
           (ir.top_pattern, ir.bag, ir.hair_style, ir.width)  # shape cues stay


def test_modality_gap_is_larger_than_the_camera_gap_and_not_bridged_by_grey(vi_data):
    """Nearest-neighbour retrieval on grey pixels: across visible cameras it works, from
    infrared to grey visible images it does not much better than chance."""
    ds, _ = vi_data

    def retrieval_map(query, gallery):
        qf = np.stack([pixels(r).reshape(-1) for r in query])
        gf = np.stack([pixels(r).reshape(-1) for r in gallery])
        qf, gf = (f - f.mean(1, keepdims=True) for f in (qf, gf))
        return evaluate(query_features=qf, gallery_features=gf, q_pids=[r.pid for r in query],
                        g_pids=[r.pid for r in gallery], q_camids=[r.camid for r in query],
                        g_camids=[r.camid for r in gallery])["mAP"]

    across_cameras = retrieval_map(ds.gallery, ds.gallery)
    across_modalities = retrieval_map(ds.query, ds.gallery)
    assert across_cameras > 1.5 * across_modalities


def test_same_seed_same_files_other_camera_sets(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for folder, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if name != "meta.json":
                    h.update(name.encode() + open(os.path.join(folder, name), "rb").read())
        return h.hexdigest()

    options = dict(num_identities=4, num_test_identities=3, image_size=(16, 8))
    generate_synthetic_vi(tmp_path / "a", seed=1, **options)
    generate_synthetic_vi(tmp_path / "b", seed=1, **options)
    generate_synthetic_vi(tmp_path / "c", seed=2, **options)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    generate_synthetic_vi(tmp_path / "d", seed=1, num_visible_cameras=2, num_infrared_cameras=3,
                          visible_cameras_per_identity=(1, 2), infrared_cameras_per_identity=(1, 3),
                          **options)
    assert (tmp_path / "d" / "exp" / "infrared_cameras.txt").read_text() == "3,4,5\n"
    ds = load_sysumm01(tmp_path / "d", name="synthetic-vi")
    assert {r.camid for r in ds.query} <= {2, 3, 4} and {r.camid for r in ds.gallery} <= {0, 1}
    with pytest.raises(FileExistsError, match="already holds a dataset|not empty"):
        generate_synthetic_vi(tmp_path / "a", seed=1, **options)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_infrared_cameras=0 must be >= 1"):
        VisibleInfraredConfig(num_infrared_cameras=0)
    with pytest.raises(ValueError, match=r"visible_cameras_per_identity=\(1, 5\)|lo <= num_visible"):
        VisibleInfraredConfig(num_visible_cameras=2, visible_cameras_per_identity=(3, 5))
    with pytest.raises(ValueError, match="image_size"):
        VisibleInfraredConfig(image_size=(8, 4))


def test_command_line(tmp_path, capsys):
    out = tmp_path / "vi"
    assert main(["--out", str(out), "--modality", "vi", "--num-identities", "3",
                 "--num-test-identities", "2", "--image-size", "16", "8", "--infrared-cameras", "1",
                 "--visible-cameras", "2"]) == 0
    assert "synthetic-vi" in capsys.readouterr().out
    assert (out / "exp" / "infrared_cameras.txt").read_text() == "3\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "x"), "--modality", "vi", "--num-distractors", "5"])
    assert exit_info.value.code == 2
    assert "--num-distractors: not used with --modality vi" in capsys.readouterr().err


def _vi_tree_digest(root):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode() + open(path, "rb").read())
    return h.hexdigest()


def test_default_options_write_the_files_written_before_infrared_from_visible(tmp_path):
    # Digest of every file (meta.json included) as the generator wrote them before the option.
    generate_synthetic_vi(tmp_path / "d", seed=3, num_identities=6, num_test_identities=6, image_size=(32, 16))
    assert "infrared_from_visible" not in (tmp_path / "d" / "meta.json").read_text()
    assert _vi_tree_digest(tmp_path / "d") == "e9b0ae913cb2918d575ae8c5a736b5159f0a565a87d92896c113ebe2eb7c533e"


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_infrared_from_visible_makes_that_share_follow_the_visible_luminance(share):
    seed, lo, hi = 11, 0.12, 0.95
    for pid in range(1, 60):
        visible, drawn, mixed = _identity_of(seed, pid), _infrared_identity(seed, pid), _infrared_identity(seed, pid, share)
        for name in ("top", "bottom", "shoes", "bag_colour"):
            r, g, b = getattr(visible, name)
            luminance = (0.299 * r + 0.587 * g + 0.114 * b) / 255
            expected = (1 - share) * getattr(drawn, name)[0] / 255 + share * (lo + (hi - lo) * luminance)
            assert abs(getattr(mixed, name)[0] - 255 * expected) <= 1, (pid, name)
        assert (mixed.skin, mixed.hair, mixed.top_pattern, mixed.width) == (drawn.skin, drawn.hair, drawn.top_pattern, drawn.width)
    tops = np.array([[np.mean(_identity_of(seed, p).top), _infrared_identity(seed, p, 1.0).top[0]] for p in range(1, 401)])
    assert np.corrcoef(tops.T)[0, 1] > 0.8


def test_infrared_from_visible_is_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match=r"infrared_from_visible=1.5 must be in \[0, 1\]"):
        VisibleInfraredConfig(infrared_from_visible=1.5)
    out = tmp_path / "vi"
    assert main(["--out", str(out), "--modality", "vi", "--num-identities", "3", "--num-test-identities", "2",
                 "--image-size", "16", "8", "--infrared-from-visible", "0.7"]) == 0
    assert '"infrared_from_visible": 0.7' in (out / "meta.json").read_text()
