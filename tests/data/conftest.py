"""Fixture folders of real (tiny) JPEG files with real dataset naming."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image


def write_jpegs(folder: Path, names: list[str]) -> None:
    """Write one 8x4 JPEG per name (sub-folders in names are created)."""
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 8), (i * 37 % 256, 80, 160)).save(path, format="JPEG")


@pytest.fixture
def jpegs():
    return write_jpegs


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic dataset (3 cameras, 12 train and 8 test identities, 32x16)."""
    from timm_reid.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    meta = generate_synthetic(root, **TINY_SYNTHETIC)
    return os.fspath(root), meta


TINY_SYNTHETIC = dict(seed=3, num_cameras=3, num_identities=12, num_test_identities=8,
                      num_distractors=4, image_size=(32, 16))
