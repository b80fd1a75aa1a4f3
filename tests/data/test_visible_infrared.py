"""SYSU-MM01 and RegDB loaders on fixture trees that follow the real releases' file lists."""
import os

import pytest
from PIL import Image

from timm_reid.data import INFRARED, VISIBLE, load_regdb, load_sysumm01
from timm_reid.data.published import DatasetCountWarning

pytestmark = pytest.mark.filterwarnings("ignore::timm_reid.data.published.DatasetCountWarning")

# identity -> cameras that saw it (SYSU-MM01: not every camera sees every identity)
SYSU_TRAIN = {1: (1, 2, 3), 2: (4, 6), 4: (1, 3, 5)}
SYSU_VAL = {5: (2, 6)}
SYSU_TEST = {6: (1, 3, 4), 7: (2, 5, 6), 9: (1, 2, 3, 6)}
IMAGES_PER_CAMERA = 2


def write_image(path, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (90, 80, 160)).save(path, format=fmt)


def write_sysu(root, train=SYSU_TRAIN, val=SYSU_VAL, test=SYSU_TEST):
    for people in (train, val, test):
        for pid, cams in people.items():
            for cam in cams:
                for k in range(1, IMAGES_PER_CAMERA + 1):
                    write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg")
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for name, people in (("train_id", train), ("val_id", val), ("test_id", test)):
        (root / "exp" / f"{name}.txt").write_text(",".join(str(p) for p in people) + "\n")
    return root


def count(people):
    return sum(len(cams) for cams in people.values()) * IMAGES_PER_CAMERA


def test_sysu_splits_modalities_and_cameras(tmp_path):
    ds = load_sysumm01(write_sysu(tmp_path))
    assert ds.name == "sysumm01" and ds.num_cameras == 6
    assert len(ds.train) == count(SYSU_TRAIN) + count(SYSU_VAL)
    assert ds.num_train_pids == 4 and sorted({r.pid for r in ds.train}) == [0, 1, 2, 3]
    for r in ds.train + ds.query + ds.gallery:
        cam = int(os.path.basename(os.path.dirname(os.path.dirname(r.path)))[3:])
        assert r.camid == cam - 1
        assert r.modality == (INFRARED if cam in (3, 6) else VISIBLE)
    # query: every infrared image of the test identities; gallery: every visible one
    assert sorted({(r.pid, r.camid) for r in ds.query}) == [(6, 2), (7, 5), (9, 2), (9, 5)]
    assert all(r.modality == INFRARED for r in ds.query) and len(ds.query) == 4 * IMAGES_PER_CAMERA
    assert all(r.modality == VISIBLE for r in ds.gallery) and len(ds.gallery) == 6 * IMAGES_PER_CAMERA
    assert ds.gallery == sorted(ds.gallery, key=lambda r: r.path)  # sorted listing
    assert "infrared" in ds.summary()


def test_sysu_inside_release_folder_and_published_size_warning(tmp_path):
    write_sysu(tmp_path / "SYSU-MM01")
    with pytest.warns(DatasetCountWarning, match="sysumm01 .*train images: found 20, published 34,167"):
        ds = load_sysumm01(tmp_path)
    assert ds.root == os.fspath(tmp_path / "SYSU-MM01")


def test_sysu_bad_layouts_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exp/ folder.*cam1 .. ROOT/cam6"):
        load_sysumm01(tmp_path)
    root = write_sysu(tmp_path / "a")
    (root / "exp" / "test_id.txt").write_text("6, seven\n")
    with pytest.raises(ValueError, match=r"test_id.txt must list identity numbers.*'seven'"):
        load_sysumm01(root)
    root = write_sysu(tmp_path / "b")
    (root / "cam2" / "person_7").mkdir()
    with pytest.raises(ValueError, match=r"'person_7'.*cam2.*identity folders named by number"):
        load_sysumm01(root)
    root = write_sysu(tmp_path / "c", test={**SYSU_TEST, 1: (1,)})
    with pytest.raises(ValueError, match=r"identities \[1\] are listed for both"):
        load_sysumm01(root)
    root = write_sysu(tmp_path / "d", test={6: (1, 4)})   # no infrared image of a test identity
    with pytest.raises(ValueError, match="the query split has no images"):
        load_sysumm01(root)


def test_sysu_other_camera_sets_name_their_infrared_cameras(tmp_path):
    """The synthetic generator's extension: exp/infrared_cameras.txt for camera sets other than 1-6."""
    root = write_sysu(tmp_path, train={1: (1, 2, 7)}, val={}, test={3: (2, 7), 4: (1, 7)})
    with pytest.raises(ValueError, match=r"infrared cameras \[3, 6\] need folders"):
        load_sysumm01(root)
    (root / "exp" / "infrared_cameras.txt").write_text("7\n")
    ds = load_sysumm01(root)
    assert {r.camid for r in ds.query} == {6} and {r.camid for r in ds.gallery} == {0, 1}
    assert [r.modality for r in ds.train].count(INFRARED) == IMAGES_PER_CAMERA


def write_regdb(root, trials=(1, 2), ids_per_split=3, images=2):
    people = list(range(1, 2 * ids_per_split + 1))
    for trial in trials:
        train_ids = people[trial - 1:trial - 1 + ids_per_split]
        test_ids = [p for p in people if p not in train_ids]
        for part, ids in (("train", train_ids), ("test", test_ids)):
            for folder, modality, letter in (("Visible", "visible", "v"), ("Thermal", "thermal", "t")):
                lines = []
                for label, pid in enumerate(ids):
                    for k in range(images):
                        rel = f"{folder}/{pid}/male_front_{letter}_{pid:05d}_{k}.bmp"
                        write_image(root / rel, fmt="BMP")
                        lines.append(f"{rel} {label}")
                (root / "idx").mkdir(parents=True, exist_ok=True)
                (root / "idx" / f"{part}_{modality}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_regdb_trial_splits(tmp_path):
    root = write_regdb(tmp_path)
    for trial in (1, 2):
        ds = load_regdb(root, trial=trial)
        assert ds.name == "regdb" and ds.num_cameras == 2 and ds.num_train_pids == 3
        assert len(ds.train) == 12 and len(ds.query) == len(ds.gallery) == 6
        assert {(r.camid, r.modality) for r in ds.query} == {(0, VISIBLE)}
        assert {(r.camid, r.modality) for r in ds.gallery} == {(1, INFRARED)}
        assert sorted({r.modality for r in ds.train}) == [VISIBLE, INFRARED]
        assert all(os.path.isfile(r.path) for r in ds.train + ds.query + ds.gallery)
    one, two = load_regdb(root, trial=1), load_regdb(root, trial=2)
    assert {r.path for r in one.train} != {r.path for r in two.train}


def test_regdb_bad_input_is_named(tmp_path):
    root = write_regdb(tmp_path / "RegDB", trials=(1,)).parent
    assert load_regdb(root).root == os.fspath(tmp_path / "RegDB")
    with pytest.raises(ValueError, match="trial must be an int from 1 to 10"):
        load_regdb(root, trial=11)
    with pytest.raises(FileNotFoundError, match="test_thermal_2.txt|train_visible_2.txt"):
        load_regdb(root, trial=2)
    with pytest.raises(FileNotFoundError, match="no idx/ folder"):
        load_regdb(tmp_path / "nowhere")
    listing = tmp_path / "RegDB" / "idx" / "test_visible_1.txt"
    listing.write_text("Visible/4/a.bmp zero\n")
    with pytest.raises(ValueError, match="Visible/4/a.bmp zero.*LABEL an int"):
        load_regdb(root)
    listing.write_text("Visible/4/missing.bmp 0\n")
    with pytest.raises(FileNotFoundError, match="1 image.*missing.bmp"):
        load_regdb(root)
