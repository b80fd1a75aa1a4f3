import torch
from PIL import Image

from timm_reid.data import ImageDataset, Record, build_transforms


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
