import re

import pytest
import torch
from PIL import Image

from timm_reid.data import ImageDataset, ImageReadError, Record, build_transforms, read_image


def test_image_dataset_items(tmp_path):
    Image.new("RGB", (20, 40), (255, 0, 0)).save(tmp_path / "a.jpg")
    Image.new("L", (20, 40), 128).save(tmp_path / "b.png")  # grey is converted to RGB
    records = [Record(str(tmp_path / "a.jpg"), 3, 1), Record(str(tmp_path / "b.png"), -1, 0)]
    ds = ImageDataset(records, build_transforms(16, 8, train=False))
    assert len(ds) == 2
    x, pid, camid, index = ds[1]
    assert x.shape == (3, 16, 8) and (pid, camid, index) == (-1, 0, 1)
    assert ImageDataset(records)[0][0].mode == "RGB"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 3, 16, 8) and batch[1].tolist() == [3, -1]
    assert batch[3].tolist() == [0, 1]


def _jpeg_bytes(tmp_path):
    Image.new("RGB", (32, 64), (10, 200, 30)).save(tmp_path / "ok.jpg", quality=90)
    return (tmp_path / "ok.jpg").read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_image_names_its_path(tmp_path, damage):
    data = _jpeg_bytes(tmp_path)
    content = {"truncated": data[: len(data) // 2], "garbage": b"\x00not a jpeg" * 50, "empty": b""}[damage]
    bad = tmp_path / f"0001_c1s1_000001_01-{damage}.jpg"
    bad.write_bytes(content)
    with pytest.raises(ImageReadError, match=re.escape(str(bad))) as info:
        read_image(str(bad))
    assert isinstance(info.value, OSError) and "corrupt, truncated" in str(info.value)
    ds = ImageDataset([Record(str(bad), 1, 0)], build_transforms(16, 8, train=False))
    with pytest.raises(ImageReadError, match=re.escape(str(bad))):
        ds[0]


def test_missing_image_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(str(tmp_path / "nope.jpg"))
