"""The dataset registry: every layout by name (``build_dataset("market1501", root)``).

Its own module so that the layouts (:mod:`timm_reid.data.layouts`) and the synthetic generator
(:mod:`timm_reid.data.synthetic`, which writes a Market-1501 layout and reads it back with the
layout's loader) import each other in one direction only. ``timm_reid.data`` re-exports both names.
"""
from __future__ import annotations

import os
from typing import Callable

from timm_reid.data.layouts import ReIDDataset, load_csv, load_dukemtmc, load_market1501, load_msmt17
from timm_reid.data.visible_infrared import load_regdb, load_sysumm01

__all__ = ["DATASETS", "build_dataset"]


def _load_synthetic(root: str | os.PathLike | None = None, **config) -> ReIDDataset:
    # lazy: `python -m timm_reid.data.synthetic` imports this package first, and an eager import
    # would load the generator a second time under its own name
    from timm_reid.data.synthetic import load_synthetic
    return load_synthetic(root, **config)


def _load_sysumm01(root: str | os.PathLike, **kwargs) -> ReIDDataset:
    """SYSU-MM01; a copy written by the synthetic generator (``--modality vi``, its ``meta.json``
    says so) loads under the name "synthetic-vi", which has no published size to warn about."""
    import json

    meta = os.path.join(os.fspath(root), "meta.json")
    if "name" not in kwargs and os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {}
        if isinstance(info, dict) and info.get("generator") == "timm_reid.data.synthetic" \
                and info.get("layout") == "sysumm01":
            kwargs["name"] = "synthetic-vi"
    return load_sysumm01(root, **kwargs)


DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "msmt17": load_msmt17,
    "csv": load_csv,
    "sysumm01": _load_sysumm01,
    "regdb": load_regdb,
    "synthetic": _load_synthetic,
}


def build_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> ReIDDataset:
    """Load dataset ``name`` from ``root``; ``kwargs`` go to the layout's loader.

    Names: ``market1501``, ``dukemtmc``, ``msmt17`` (``version=``), ``csv``, the
    visible-infrared ``sysumm01`` and ``regdb`` (``trial=1..10``, default 1) and
    ``synthetic`` (generator options such as ``seed=``, ``num_cameras=``; ``root=None``
    generates into a cache folder, see :func:`timm_reid.data.synthetic.load_synthetic`).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if root is None and name != "synthetic":
        raise ValueError(f"dataset {name!r} needs root= (the folder holding its files); "
                         "only 'synthetic' can run without one")
    return DATASETS[name](root, **kwargs)
