"""Visible-infrared layouts: SYSU-MM01 and RegDB, as distributed (no conversion step).

Both return a :class:`~timm_reid.data.layouts.ReIDDataset` of
:class:`~timm_reid.data.layouts.VIRecord` records, which carry their modality
(:data:`~timm_reid.data.layouts.VISIBLE` / :data:`~timm_reid.data.layouts.INFRARED`); a camera
records one modality. Query and gallery follow the papers' test protocols
(:mod:`timm_reid.evaluation.visible_infrared` evaluates them):

- SYSU-MM01: the query is every infrared image of the test identities; the gallery holds *every*
  visible image of the test identities (the pool). The protocol's gallery is one image per
  identity and camera, drawn anew in each of 10 trials, and the cameras depend on the search
  mode (all: 1, 2, 4, 5; indoor: 1, 2): the evaluation draws them from this pool, so features are
  extracted once for all trials and both modes.
- RegDB: one of the 10 published train/test splits (``trial=1..10``); the query is the visible
  test images, the gallery the thermal ones (the evaluation swaps them for thermal-to-visible).
"""
from __future__ import annotations

import os
import re
from typing import Sequence

from timm_reid.data.layouts import (INFRARED, VISIBLE, ReIDDataset, VIRecord, _make_dataset,
                                    _malformed_error)
from timm_reid.data.published import warn_if_unexpected

__all__ = ["SYSU_INFRARED_CAMERAS", "load_regdb", "load_sysumm01"]

# ---------------------------------------------------------------- SYSU-MM01

# Camera folders cam1..cam6: 1, 2 indoor visible, 3 indoor infrared, 4, 5 outdoor visible,
# 6 outdoor infrared (Wu et al., ICCV 2017).
SYSU_INFRARED_CAMERAS = (3, 6)
_SYSU_HINT = ("ROOT/cam1 .. ROOT/cam6 holding PID folders ('0001') of images, and "
              "ROOT/exp/{train_id,val_id,test_id}.txt (comma-separated identity numbers), "
              "optionally inside ROOT/SYSU-MM01")
_SYSU_CAMERA = re.compile(r"^cam(\d+)$")
_SYSU_PID = re.compile(r"^\d+$")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Written by timm-reid's synthetic generator for camera sets other than SYSU-MM01's own:
# the infrared camera numbers, comma-separated. The real dataset has no such file.
_SYSU_INFRARED_FILE = "infrared_cameras.txt"


def _read_id_list(path: str) -> list[int]:
    """Identity numbers of an ``exp/*_id.txt`` file: comma-separated, on one or more lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SYSU-MM01 identity list not found: {path}. Expected layout: "
                                f"{_SYSU_HINT}")
    with open(path, encoding="utf-8") as f:
        cells = [c.strip() for c in f.read().replace("\n", ",").split(",") if c.strip()]
    bad = [c for c in cells if not c.isdigit()]
    if bad:
        raise ValueError(f"{path} must list identity numbers separated by commas, like "
                         f"'1,2,4,5'; found {bad[:5]}")
    return [int(c) for c in cells]


def _sysu_root(root: str) -> str:
    for base in (root, os.path.join(root, "SYSU-MM01")):
        if os.path.isdir(os.path.join(base, "exp")):
            return base
    raise FileNotFoundError(f"SYSU-MM01 not found under {root}: no exp/ folder. Expected layout: "
                            f"{_SYSU_HINT}")


def _sysu_cameras(base: str) -> list[int]:
    cameras = sorted(int(m.group(1)) for m in map(_SYSU_CAMERA.match, os.listdir(base)) if m
                     and os.path.isdir(os.path.join(base, m.group(0))))
    if not cameras or min(cameras) < 1:
        raise FileNotFoundError(f"no camera folders cam1, cam2, ... in {base}. Expected layout: "
                                f"{_SYSU_HINT}")
    return cameras


def _sysu_infrared(base: str, cameras: Sequence[int]) -> tuple[int, ...]:
    path = os.path.join(base, "exp", _SYSU_INFRARED_FILE)
    infrared = tuple(_read_id_list(path)) if os.path.isfile(path) else SYSU_INFRARED_CAMERAS
    missing = sorted(set(infrared) - set(cameras))
    visible = sorted(set(cameras) - set(infrared))
    if missing or not visible:
        raise ValueError(f"SYSU-MM01 at {base}: infrared cameras {list(infrared)} need folders "
                         f"{['cam%d' % c for c in infrared]} and at least one visible camera "
                         f"folder besides them; found {['cam%d' % c for c in cameras]}")
    return infrared


def _sysu_records(base: str, camera: int, modality: int, wanted: set[int]) -> list[VIRecord]:
    """Records of camera folder ``cam<camera>`` for the identities in ``wanted``, sorted."""
    folder = os.path.join(base, f"cam{camera}")
    entries = sorted(os.listdir(folder))
    bad = [e for e in entries if not _SYSU_PID.match(e) or not os.path.isdir(os.path.join(folder, e))]
    if bad:
        raise _malformed_error(folder, bad, len(entries), "identity folders named by number, "
                               "like '0001', holding that identity's images")
    records = []
    for entry in entries:
        if int(entry) not in wanted:
            continue
        person = os.path.join(folder, entry)
        for name in sorted(os.listdir(person)):
            if name.lower().endswith(_IMAGE_EXTENSIONS):
                records.append(VIRecord(os.path.join(person, name), int(entry), camera - 1, modality))
    return records


def load_sysumm01(root: str | os.PathLike, *, name: str = "sysumm01") -> ReIDDataset:
    """SYSU-MM01 (Wu et al., ICCV 2017), the original release's folders.

    Layout: ``root/cam1 .. root/cam6/PID/NNNN.jpg`` and ``root/exp/train_id.txt``,
    ``val_id.txt``, ``test_id.txt`` (identity numbers separated by commas; ``root`` may also
    hold a ``SYSU-MM01`` folder with them). Cameras 3 and 6 are infrared (near-infrared images,
    stored as 3 channels), the others visible; ``camid`` is the camera number - 1. Training
    identities are those of ``train_id.txt`` and ``val_id.txt`` (the papers' 395), relabelled
    ``0..K-1``; query = every infrared image of the test identities, gallery = every visible
    image of the test identities (the pool the protocol draws its trials from, see the module
    docstring). Test pids keep their file numbers. ``name`` names the dataset (the synthetic
    generator's copies load as ``"synthetic-vi"``, which has no published size).

    Expected counts: 395 train identities with 22,258 visible + 11,909 infrared images,
    3,803 query images (96 identities), 6 cameras. Other counts give a
    :class:`~timm_reid.data.published.DatasetCountWarning`.
    """
    base = _sysu_root(os.fspath(root))
    exp = os.path.join(base, "exp")
    train_ids = set(_read_id_list(os.path.join(exp, "train_id.txt")))
    val_path = os.path.join(exp, "val_id.txt")
    train_ids |= set(_read_id_list(val_path)) if os.path.isfile(val_path) else set()
    test_ids = set(_read_id_list(os.path.join(exp, "test_id.txt")))
    overlap = sorted(train_ids & test_ids)
    if overlap:
        raise ValueError(f"SYSU-MM01 at {base}: identities {overlap[:5]} are listed for both "
                         "training and test; the id lists must be disjoint")
    cameras = _sysu_cameras(base)
    infrared = _sysu_infrared(base, cameras)
    train, query, gallery = [], [], []
    for camera in cameras:
        modality = INFRARED if camera in infrared else VISIBLE
        train += _sysu_records(base, camera, modality, train_ids)
        (query if modality == INFRARED else gallery).extend(_sysu_records(base, camera, modality, test_ids))
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        if not records:
            raise ValueError(f"SYSU-MM01 at {base}: the {split} split has no images (check the "
                             f"exp/*_id.txt lists against the PID folders). Expected layout: {_SYSU_HINT}")
    dataset = _make_dataset(name, base, train, query, gallery)
    warn_if_unexpected(dataset)
    return dataset


# ---------------------------------------------------------------- RegDB

_REGDB_HINT = ("ROOT/Visible/..., ROOT/Thermal/... and ROOT/idx/{train,test}_{visible,thermal}_"
               "{1..10}.txt with lines 'Visible/ID/NAME.bmp LABEL'")


def _read_regdb_list(path: str, base: str, camid: int, modality: int) -> list[VIRecord]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RegDB list file not found: {path}. Expected layout: {_REGDB_HINT}")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    records, bad = [], []
    for line in lines:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            bad.append(line)
            continue
        records.append(VIRecord(os.path.join(base, fields[0]), int(fields[1]), camid, modality))
    if bad or not records:
        raise _malformed_error(path, bad or ["(empty file)"], len(lines),
                               "lines 'RELATIVE/PATH.bmp LABEL' (LABEL an int)")
    missing = [r.path for r in records if not os.path.isfile(r.path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {path} do not exist, e.g. "
                                f"{missing[0]}; paths are relative to {base}")
    return records


def load_regdb(root: str | os.PathLike, *, trial: int = 1) -> ReIDDataset:
    """RegDB (Nguyen et al., Sensors 2017), one of its 10 published splits.

    Layout: ``root/Visible``, ``root/Thermal`` and ``root/idx/{train,test}_{visible,thermal}_T.txt``
    for trial ``T`` in 1..10 (lines ``Visible/ID/NAME.bmp LABEL``; ``root`` may also hold a
    ``RegDB`` folder with them). The visible camera is camid 0, the thermal one camid 1 (infrared
    modality). Train = both modalities of the trial's training identities (relabelled
    ``0..K-1``); query = visible test images, gallery = thermal test images. Published results
    average the 10 trials, each trained separately.

    Expected counts per trial: 206 train identities with 2,060 visible + 2,060 thermal images,
    2,060 query and 2,060 gallery images, 2 cameras.
    """
    if not isinstance(trial, int) or not 1 <= trial <= 10:
        raise ValueError(f"RegDB trial must be an int from 1 to 10 (its 10 published splits), "
                         f"got {trial!r}")
    root = os.fspath(root)
    base = next((b for b in (root, os.path.join(root, "RegDB")) if os.path.isdir(os.path.join(b, "idx"))),
                None)
    if base is None:
        raise FileNotFoundError(f"RegDB not found under {root}: no idx/ folder. Expected layout: "
                                f"{_REGDB_HINT}")
    idx = os.path.join(base, "idx")

    def split(part: str, modality: int) -> list[VIRecord]:
        name = "visible" if modality == VISIBLE else "thermal"
        return _read_regdb_list(os.path.join(idx, f"{part}_{name}_{trial}.txt"), base,
                                camid=modality, modality=modality)

    dataset = _make_dataset("regdb", base, split("train", VISIBLE) + split("train", INFRARED),
                            split("test", VISIBLE), split("test", INFRARED))
    warn_if_unexpected(dataset)
    return dataset
