import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.data import (DATASETS, Record, build_dataset, load_csv, load_dukemtmc,
                            load_market1501, load_msmt17, relabel, split_query_gallery)

# These miniature copies of the real layouts are smaller than the published datasets on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::timm_reid.data.published.DatasetCountWarning")

MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                "0007_c3s3_015738_04.jpg", "0010_c6s4_002427_02.jpg"]
MARKET_QUERY = ["0001_c1s1_001051_00.jpg", "0003_c4s6_015641_00.jpg"]
MARKET_GALLERY = ["-1_c1s1_000401_03.jpg", "0000_c5s3_070352_02.jpg",
                  "0001_c2s1_000301_02.jpg", "0003_c3s2_001528_01.jpg"]


@pytest.fixture
def market(tmp_path, jpegs):
    jpegs(tmp_path / "bounding_box_train", MARKET_TRAIN)
    jpegs(tmp_path / "query", MARKET_QUERY)
    jpegs(tmp_path / "bounding_box_test", MARKET_GALLERY)
    (tmp_path / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return tmp_path


def test_market_counts_relabel_and_junk(market):
    ds = load_market1501(market)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 2, 3)
    assert ds.num_train_pids == 3 and ds.num_cameras == 6 and ds.val == []
    # train relabelled in sorted pid order, cameras 0-based, files in sorted order
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 1), (1, 2), (2, 5)]
    assert ds.train[0].path == os.path.join(market, "bounding_box_train", MARKET_TRAIN[0])
    # query/gallery keep original pids; junk -1 dropped, distractor 0 kept
    assert [(r.pid, r.camid) for r in ds.query] == [(1, 0), (3, 3)]
    assert sorted(r.pid for r in ds.gallery) == [0, 1, 3]
    assert "train" in ds.summary() and ds.name == "market1501"


def test_market_inside_release_folder(tmp_path, jpegs):
    base = tmp_path / "Market-1501-v15.09.15"
    for folder, names in (("bounding_box_train", MARKET_TRAIN), ("query", MARKET_QUERY),
                          ("bounding_box_test", MARKET_GALLERY)):
        jpegs(base / folder, names)
    ds = build_dataset("market1501", tmp_path)
    assert ds.root == os.fspath(base) and len(ds.train) == 4


def test_market_malformed_name_lists_files_and_pattern(market, jpegs):
    jpegs(market / "query", ["0001_c1_f000123.jpg", "person.jpg"])
    with pytest.raises(ValueError) as err:
        load_market1501(market)
    message = str(err.value)
    assert "'0001_c1_f000123.jpg'" in message and "'person.jpg'" in message
    assert "(2 of 4 files)" in message and os.path.join(market, "query") in message
    assert "0002_c1s1_000451_03.jpg" in message


def test_market_camera_zero_is_malformed(market, jpegs):
    jpegs(market / "query", ["0001_c0s1_001051_00.jpg"])
    with pytest.raises(ValueError, match="0001_c0s1_001051_00.jpg"):
        load_market1501(market)


def test_market_missing_folder(tmp_path, jpegs):
    jpegs(tmp_path / "bounding_box_train", MARKET_TRAIN)
    with pytest.raises(FileNotFoundError, match="query folder not found: .*query"):
        load_market1501(tmp_path)


def test_market_empty_folder(market):
    for name in MARKET_QUERY:
        (market / "query" / name).unlink()
    with pytest.raises(ValueError, match="no .jpg images in .*query"):
        load_market1501(market)


def test_duke(tmp_path, jpegs):
    base = tmp_path / "DukeMTMC-reID"
    jpegs(base / "bounding_box_train", ["0001_c2_f0046182.jpg", "0005_c8_f0003356.jpg",
                                        "0001_c6_f0031279.jpg"])
    jpegs(base / "query", ["0002_c1_f0044158.jpg"])
    jpegs(base / "bounding_box_test", ["0002_c7_f0061320.jpg", "4441_c5_f0107521.jpg"])
    ds = load_dukemtmc(tmp_path)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (3, 1, 2)
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 1), (0, 5), (1, 7)]
    assert ds.num_cameras == 8 and ds.gallery[1].pid == 4441


def test_duke_rejects_market_names(tmp_path, jpegs):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        jpegs(tmp_path / folder, ["0002_c1s1_000451_03.jpg"])
    with pytest.raises(ValueError, match="0001_c2_f0046182.jpg"):
        load_dukemtmc(tmp_path)


# --------------------------------------------------------------------------- MSMT17

MSMT_TRAIN = ["0000/0000_000_01_0303morning_0015_0.jpg 0",
              "0000/0000_001_05_0303morning_0036_1.jpg 0",
              "0007/0007_003_14_0303noon_0914_0.jpg 7"]
MSMT_VAL = ["0003/0003_010_02_0303afternoon_1033_2.jpg 3"]
MSMT_QUERY = ["0000/0000_000_15_0113morning_0170_0.jpg 0"]
MSMT_GALLERY = ["0000/0000_004_07_0113noon_0311_1.jpg 0",
                "0001/0001_002_11_0114afternoon_0003_0.jpg 1"]


def make_msmt(base, jpegs, train_dir, test_dir, with_val=True):
    lists = {"train": MSMT_TRAIN, "query": MSMT_QUERY, "gallery": MSMT_GALLERY}
    if with_val:
        lists["val"] = MSMT_VAL
    for split, lines in lists.items():
        base.mkdir(parents=True, exist_ok=True)
        (base / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
        folder = train_dir if split in ("train", "val") else test_dir
        jpegs(base / folder, [line.split()[0] for line in lines])


@pytest.mark.parametrize("version, top, train_dir, test_dir", [
    ("v1", "MSMT17_V1", "train", "test"),
    ("v2", "MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17_versions(tmp_path, jpegs, version, top, train_dir, test_dir):
    make_msmt(tmp_path / top, jpegs, train_dir, test_dir)
    for root in (tmp_path, tmp_path / top):  # parent or the version folder itself
        ds = load_msmt17(root)
        assert (len(ds.train), len(ds.val), len(ds.query), len(ds.gallery)) == (3, 1, 1, 2)
        assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 4), (1, 13)]
        assert ds.val[0] == Record(os.path.join(tmp_path, top, train_dir, MSMT_VAL[0].split()[0]),
                                   3, 1)
        assert [(r.pid, r.camid) for r in ds.query] == [(0, 14)]
        assert ds.num_cameras == 15
        assert load_msmt17(root, version=version).train == ds.train


def test_msmt17_without_val(tmp_path, jpegs):
    make_msmt(tmp_path, jpegs, "train", "test", with_val=False)
    assert load_msmt17(tmp_path).val == []


def test_msmt17_malformed_line(tmp_path, jpegs):
    make_msmt(tmp_path, jpegs, "train", "test")
    with open(tmp_path / "list_gallery.txt", "a") as f:
        f.write("0001/0001_c14_0030.jpg 1\n")
    with pytest.raises(ValueError) as err:
        load_msmt17(tmp_path)
    assert "'0001/0001_c14_0030.jpg 1'" in str(err.value)
    assert "list_gallery.txt" in str(err.value) and "PID_INDEX_CAM" in str(err.value)


def test_msmt17_missing_image_and_missing_layout(tmp_path, jpegs):
    make_msmt(tmp_path, jpegs, "train", "test")
    (tmp_path / "test" / MSMT_QUERY[0].split()[0]).unlink()
    with pytest.raises(FileNotFoundError, match="1 image.*list_query.txt do not exist"):
        load_msmt17(tmp_path)
    with pytest.raises(FileNotFoundError, match="MSMT17 not found"):
        load_msmt17(tmp_path / "train")
    with pytest.raises(ValueError, match="unknown MSMT17 version 'v3'"):
        load_msmt17(tmp_path, version="v3")


def test_msmt17_ambiguous_versions(tmp_path, jpegs):
    make_msmt(tmp_path, jpegs, "train", "test")
    make_msmt(tmp_path, jpegs, "mask_train_v2", "mask_test_v2")
    with pytest.raises(ValueError, match="both MSMT17 versions"):
        load_msmt17(tmp_path)
    assert len(load_msmt17(tmp_path, version="v2").train) == 3


# --------------------------------------------------------------------------- CSV

def test_csv_single_file_unlabelled(tmp_path, jpegs):
    jpegs(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "cams.csv").write_text("path,camid\nimg/a.jpg,0\nimg/b.jpg,2\n\nimg/c.jpg,1\n")
    ds = build_dataset("csv", tmp_path / "cams.csv")
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in ds.train] == [
        ("a.jpg", -1, 0), ("b.jpg", -1, 2), ("c.jpg", -1, 1)]
    assert ds.query == [] and ds.num_cameras == 3 and ds.num_train_pids == 0


def test_csv_folder_with_evaluation_splits(tmp_path, jpegs):
    jpegs(tmp_path, ["t1.jpg", "t2.jpg", "q.jpg", "g1.jpg", "g2.jpg", "v.jpg"])
    (tmp_path / "train.csv").write_text("t1.jpg,0,9\nt2.jpg,1,\n")  # no header, pid optional
    (tmp_path / "query.csv").write_text("path,camid,pid\nq.jpg,0,5\n")
    (tmp_path / "gallery.csv").write_text(f"g1.jpg,1,5\n{tmp_path / 'g2.jpg'},1,6\n")
    (tmp_path / "val.csv").write_text("v.jpg,0,9\n")
    ds = load_csv(tmp_path)
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (-1, 1)]
    assert [r.pid for r in ds.query] == [5] and [r.pid for r in ds.gallery] == [5, 6]
    assert [r.pid for r in ds.val] == [9] and ds.num_train_pids == 1


@pytest.mark.parametrize("row", ["a.jpg", "a.jpg,cam1", "a.jpg,-1", "a.jpg,0,x", ",0"])
def test_csv_malformed_rows(tmp_path, jpegs, row):
    jpegs(tmp_path, ["a.jpg"])
    (tmp_path / "train.csv").write_text(f"a.jpg,0\n{row}\n")
    with pytest.raises(ValueError, match=r"1 of 2 rows of .*train.csv are malformed: line 2 .*column.*path,camid"):
        load_csv(tmp_path)


def test_csv_query_needs_pid_and_gallery(tmp_path, jpegs):
    jpegs(tmp_path, ["a.jpg"])
    (tmp_path / "train.csv").write_text("a.jpg,0\n")
    (tmp_path / "query.csv").write_text("a.jpg,0\n")
    with pytest.raises(FileNotFoundError, match="only one of query.csv and gallery.csv"):
        load_csv(tmp_path)
    (tmp_path / "gallery.csv").write_text("a.jpg,0,1\n")
    with pytest.raises(ValueError, match=r"query.csv .*line 1 .*column 3 \(pid\) is required"):
        load_csv(tmp_path)


def test_csv_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a CSV file nor a folder with train.csv"):
        load_csv(tmp_path)
    (tmp_path / "train.csv").write_text("missing.jpg,0\n")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_csv(tmp_path)


# --------------------------------------------------------------------------- helpers

def test_build_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset 'market'; valid names: market1501"):
        build_dataset("market", "/nowhere")
    with pytest.raises(ValueError, match="needs root="):
        build_dataset("dukemtmc")
    assert set(DATASETS) == {"market1501", "dukemtmc", "msmt17", "csv", "synthetic", "sysumm01", "regdb"}


def test_relabel():
    records = [Record("a", 3, 0), Record("b", 4, 1)]
    assert relabel(records, [7, -1]) == [Record("a", 7, 0), Record("b", -1, 1)]
    with pytest.raises(ValueError, match="got 1 labels for 2 records"):
        relabel(records, [1])


def test_split_query_gallery_market_rule():
    records = ([Record(f"a{i}", 1, 0) for i in range(3)] + [Record("a3", 1, 1)]  # 2 cams
               + [Record(f"b{i}", 2, 2) for i in range(3)]  # one camera only: no query
               + [Record("c0", 3, 0), Record("c1", 3, 1)])  # one image per camera: no query
    query, gallery = split_query_gallery(records, seed=0)
    assert [r.pid for r in query] == [1] and query[0].camid == 0
    assert len(query) + len(gallery) == len(records)
    assert split_query_gallery(records, seed=0) == (query, gallery)
    with pytest.raises(ValueError, match="pid -1"):
        split_query_gallery([Record("x", -1, 0)])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), max_size=60),
       st.integers(0, 5))
def test_split_query_gallery_properties(pairs, seed):
    records = [Record(f"img{i}", pid, cam) for i, (pid, cam) in enumerate(pairs)]
    query, gallery = split_query_gallery(records, seed=seed)
    assert sorted(query + gallery) == sorted(records)
    keys = [(r.pid, r.camid) for r in query]
    assert len(keys) == len(set(keys))  # at most one query per identity and camera
    in_gallery = {(r.pid, r.camid) for r in gallery}
    for pid, cam in keys:
        assert (pid, cam) in in_gallery
        assert any(p == pid and c != cam for p, c in in_gallery)
    # every (identity, camera) with >= 2 images of an identity seen in >= 2 cameras has one
    cams = {pid: {c for p, c in pairs if p == pid} for pid, _ in pairs}
    expected = {(p, c) for p, c in set(pairs) if len(cams[p]) >= 2 and pairs.count((p, c)) >= 2}
    assert set(keys) == expected
