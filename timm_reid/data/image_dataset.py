"""A map-style dataset over :class:`~timm_reid.data.layouts.Record` lists."""
from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from timm_reid.data.layouts import Record

__all__ = ["ImageDataset", "ImageReadError", "read_image"]


class ImageReadError(OSError):
    """An image file that cannot be decoded (corrupt, truncated or not an image); names the file."""


def read_image(path: str) -> Image.Image:
    """Load an image file as RGB; a missing file raises FileNotFoundError, an unreadable one
    :class:`ImageReadError` naming it (Pillow's own messages, e.g. "Truncated File Read", do not)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's decoders raise all three
        raise ImageReadError(f"cannot read image {path}: {exc} (the file is corrupt, truncated or not "
                             "an image; re-extract the dataset or remove the file)") from exc


class ImageDataset(Dataset):
    """Items ``(image, pid, camid, index)``; ``index`` is the position in ``records``.

    The index lets training code attach per-sample pseudo labels or features. To train on
    pseudo labels, build the dataset from ``relabel(records, labels)``.
    """

    def __init__(self, records: Sequence[Record], transform: Callable | None = None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = read_image(record.path)
        if self.transform is not None:
            image = self.transform(image)
        return image, record.pid, record.camid, index
