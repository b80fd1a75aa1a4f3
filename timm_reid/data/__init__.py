"""Data for person re-identification: dataset layouts, a synthetic multi-camera generator,
transforms, an image dataset and samplers.

``generate_synthetic``, ``load_synthetic`` and ``SyntheticConfig`` live in
``timm_reid.data.synthetic``; they are re-exported lazily so that
``python -m timm_reid.data.synthetic`` does not import its own module twice.
"""
from timm_reid.data.image_dataset import ImageDataset, ImageReadError, read_image
from timm_reid.data.layouts import (
    INFRARED,
    VISIBLE,
    Record,
    ReIDDataset,
    VIRecord,
    load_csv,
    load_dukemtmc,
    load_market1501,
    load_msmt17,
    modality_of,
    relabel,
    split_query_gallery,
)
from timm_reid.data.registry import DATASETS, build_dataset
from timm_reid.data.samplers import CameraBatchSampler, RandomIdentitySampler
from timm_reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from timm_reid.data.visible_infrared import load_regdb, load_sysumm01

_SYNTHETIC_EXPORTS = ("SyntheticConfig", "generate_synthetic", "load_synthetic")

__all__ = [
    "CameraBatchSampler",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INFRARED",
    "ImageDataset",
    "ImageReadError",
    "RandomIdentitySampler",
    "Record",
    "ReIDDataset",
    "VIRecord",
    "VISIBLE",
    "build_dataset",
    "build_transforms",
    "load_csv",
    "load_dukemtmc",
    "load_market1501",
    "load_msmt17",
    "load_regdb",
    "load_sysumm01",
    "modality_of",
    "read_image",
    "relabel",
    "split_query_gallery",
    *_SYNTHETIC_EXPORTS,
]


def __getattr__(name: str):
    if name in _SYNTHETIC_EXPORTS:
        from timm_reid.data import synthetic
        return getattr(synthetic, name)
    raise AttributeError(f"module 'timm_reid.data' has no attribute {name!r}")
