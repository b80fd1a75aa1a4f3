"""Known datasets are compared with their published sizes; CSV files with a byte-order mark load."""
import warnings

import pytest

from timm_reid.data import Record, ReIDDataset, build_dataset, load_csv, load_market1501, load_msmt17
from timm_reid.data.published import PUBLISHED_COUNTS, DatasetCountWarning, count_differences
from timm_reid.data.synthetic import load_synthetic

from .conftest import TINY_SYNTHETIC


def _records(n_images, n_ids, n_cams, start_pid=0):
    return [Record(f"{i}.jpg", start_pid + i % n_ids, i % n_cams) for i in range(n_images)]


def test_published_size_gives_no_difference():
    # Market-1501 as torchreid/the paper report it: 751 train ids, 6 cameras
    ds = ReIDDataset("market1501", "/m", train=_records(12_936, 751, 6), query=_records(3_368, 750, 6),
                     gallery=_records(15_913, 751, 6), num_cameras=6)
    assert count_differences(ds) == []
    assert "differs" not in ds.summary()
    # MSMT17: train and val compared together, so both preprocessing variants pass
    split = ReIDDataset("msmt17", "/s", train=_records(30_248, 1_041, 15), query=_records(11_659, 3_060, 15),
                        gallery=_records(82_161, 3_060, 15), num_cameras=15, val=_records(2_373, 1_041, 15))
    merged = ReIDDataset("msmt17", "/s", train=_records(32_621, 1_041, 15), query=split.query,
                         gallery=split.gallery, num_cameras=15)
    assert count_differences(split) == [] and count_differences(merged) == []
    # SYSU-MM01: its gallery is drawn per trial, so only train, query and cameras are compared
    sysu = ReIDDataset("sysumm01", "/y", train=_records(34_167, 395, 6), query=_records(3_803, 96, 6),
                       gallery=_records(7, 7, 4), num_cameras=6)
    regdb = ReIDDataset("regdb", "/r", train=_records(4_120, 206, 2), query=_records(2_060, 206, 1),
                        gallery=_records(2_060, 206, 1), num_cameras=2)
    assert count_differences(sysu) == [] and count_differences(regdb) == []
    assert set(PUBLISHED_COUNTS) == {"market1501", "dukemtmc", "msmt17", "sysumm01", "regdb"}


def test_partial_market_copy_warns_with_expected_and_found_counts(tmp_path, jpegs):
    jpegs(tmp_path / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0007_c3s3_015738_04.jpg"])
    jpegs(tmp_path / "query", ["0001_c1s1_001051_00.jpg"])
    jpegs(tmp_path / "bounding_box_test", ["-1_c1s1_000401_03.jpg", "0001_c2s1_000301_02.jpg"])
    with pytest.warns(DatasetCountWarning) as record:
        ds = build_dataset("market1501", tmp_path)
    message = str(record[0].message)
    for text in ("train images: found 2, published 12,936", "train identities: found 2, published 751",
                 "query images: found 1, published 3,368", "gallery images: found 1, published 15,913",
                 "cameras: found 3, published 6", str(tmp_path)):
        assert text in message, text
    assert "published 12,936" in ds.summary()  # what a training run writes to its log


def test_partial_msmt17_copy_warns(tmp_path, jpegs):
    names = ["0000/0000_000_01_0303morning_0015_0.jpg", "0001/0001_000_02_0303morning_0016_0.jpg"]
    jpegs(tmp_path / "train", names)
    jpegs(tmp_path / "test", names)
    for split in ("train", "query", "gallery"):
        (tmp_path / f"list_{split}.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    with pytest.warns(DatasetCountWarning, match="msmt17 .*train images: found 2, published 32,621"):
        load_msmt17(tmp_path)


def test_synthetic_and_csv_data_never_warn(tiny_synthetic, tmp_path, jpegs):
    root, _ = tiny_synthetic
    jpegs(tmp_path, ["a.jpg"])
    (tmp_path / "train.csv").write_text("a.jpg,0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetCountWarning)
        ds = load_synthetic(root, **TINY_SYNTHETIC)
        load_market1501(root, name="synthetic")
        load_csv(tmp_path)
    assert "differs" not in ds.summary()


def test_csv_with_byte_order_mark_loads(tmp_path, jpegs):
    jpegs(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "train.csv").write_bytes("\ufeffpath,camid,pid\na.jpg,0,3\nb.jpg,1,\n".encode("utf-8"))
    ds = load_csv(tmp_path / "train.csv")
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (-1, 1)]
    (tmp_path / "train.csv").write_bytes("\ufeffa.jpg,0\n".encode("utf-8"))  # BOM, no header
    assert load_csv(tmp_path).train[0].path == str(tmp_path / "a.jpg")


@pytest.mark.parametrize("row, problem", [
    ("a.jpg", "1 columns, expected 2 or 3"),
    ("a.jpg,cam1", "column 2 (camid) 'cam1' is not a non-negative int"),
    ("a.jpg,0,x", "column 3 (pid) 'x' is not an int"),
    (",0", "column 1 (path) is empty"),
    ("a.jpg,0,1,2", "4 columns"),
])
def test_csv_errors_name_rows_and_columns(tmp_path, jpegs, row, problem):
    jpegs(tmp_path, ["a.jpg"])
    (tmp_path / "train.csv").write_text(f"path,camid,pid\na.jpg,0\n\n{row}\n")
    with pytest.raises(ValueError) as info:
        load_csv(tmp_path)
    message = str(info.value)
    assert f"line 4 ({row}): {problem}" in message  # the file's line number (header and blank line counted)
    assert "1 of 2 rows" in message and "file name" not in message
