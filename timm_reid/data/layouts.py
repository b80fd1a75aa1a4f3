"""Dataset layouts: Market-1501, DukeMTMC-reID, MSMT17 (v1 and v2) and a generic CSV.

Every loader returns a :class:`ReIDDataset` whose splits are lists of :class:`Record`
``(path, pid, camid)``:

- ``camid`` is a 0-based int (file names count cameras from 1);
- every layout of this module is visible-only; the visible-infrared layouts
  (:mod:`timm_reid.data.visible_infrared`) return :class:`VIRecord` ``(path, pid, camid,
  modality)``, which reads like a ``Record`` by attribute (:func:`modality_of` gives any record's
  modality);
- training pids are relabelled ``0..K-1`` in sorted order of the original pids; query,
  gallery and validation records keep their original pids;
- ``pid == -1`` means "identity unknown" (unlabelled CSV data); Market-1501 junk images
  (file name pid ``-1``) are dropped, distractors (pid ``0``) are kept.

File listings are sorted, so record order and labels never depend on the file system.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from timm_reid.data.published import count_differences, warn_if_unexpected

__all__ = [
    "INFRARED",
    "VISIBLE",
    "Record",
    "ReIDDataset",
    "VIRecord",
    "modality_of",
    "load_market1501",
    "load_dukemtmc",
    "load_msmt17",
    "load_csv",
    "relabel",
    "split_query_gallery",
]


VISIBLE, INFRARED = 0, 1


class Record(NamedTuple):
    """One image: file path, identity (-1 unknown) and 0-based camera index."""

    path: str
    pid: int
    camid: int


class VIRecord(NamedTuple):
    """One image of a visible-infrared dataset: a :class:`Record` plus its modality
    (:data:`VISIBLE` or :data:`INFRARED`; a camera records one modality). A separate type, so
    that code unpacking a ``Record`` into three names keeps working on visible-only data."""

    path: str
    pid: int
    camid: int
    modality: int


def modality_of(record) -> int:
    """:data:`VISIBLE` for a :class:`Record`, the stored modality for a :class:`VIRecord`."""
    return getattr(record, "modality", VISIBLE)


@dataclass(frozen=True)
class ReIDDataset:
    """A re-identification dataset description (file lists, no pixels).

    Attributes:
        name: registry name of the layout (``"market1501"``, ...).
        root: the folder the records were read from.
        train: training records, pids relabelled ``0..K-1`` (or -1 when unknown).
        query: query records, original pids.
        gallery: gallery records, original pids.
        num_cameras: ``1 + max camid`` over all splits.
        val: validation records (original pids) when the layout has a validation split
            (MSMT17 ``list_val.txt``, CSV ``val.csv``), else empty. Select checkpoints on
            this, never on query/gallery.
    """

    name: str
    root: str
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    num_cameras: int
    val: list[Record] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        """Number of distinct known training identities (pid -1 excluded)."""
        return len({r.pid for r in self.train if r.pid >= 0})

    def summary(self) -> str:
        """A small table of identity, image and camera counts per split."""
        rows = [("train", self.train), ("val", self.val), ("query", self.query),
                ("gallery", self.gallery)]
        lines = [f"{self.name} ({self.root}), {self.num_cameras} cameras",
                 f"  {'split':<8}{'ids':>7}{'images':>9}{'cameras':>9}"]
        for split, records in rows:
            if records:
                ids = len({r.pid for r in records if r.pid >= 0})
                cams = len({r.camid for r in records})
                infrared = sum(modality_of(r) == INFRARED for r in records)
                line = f"  {split:<8}{ids:>7}{len(records):>9}{cams:>9}"
                lines.append(line + (f"   ({infrared} infrared)" if infrared else ""))
        differences = count_differences(self)
        if differences:
            lines.append("  differs from the published counts: " + "; ".join(differences))
        return "\n".join(lines)


def relabel(records: Sequence[Record], labels: Sequence[int]) -> list[Record]:
    """Return ``records`` with their pids replaced by ``labels`` (e.g. pseudo labels).

    ``labels[i]`` becomes the pid of ``records[i]``; use -1 for samples to leave out of
    identity sampling (e.g. un-clustered outliers).
    """
    if len(labels) != len(records):
        raise ValueError(f"relabel: got {len(labels)} labels for {len(records)} records; "
                         "pass exactly one label per record")
    return [r._replace(pid=int(label)) for r, label in zip(records, labels)]


def split_query_gallery(records: Sequence[Record], *, seed: int = 0
                        ) -> tuple[list[Record], list[Record]]:
    """Split labelled records into query and gallery the Market-1501 way.

    For every identity seen in at least two cameras, one random image per camera that holds
    at least two images of it becomes a query; all other records form the gallery. So each
    camera keeps a gallery image of every identity it saw, and every query has a
    same-identity gallery match in another camera. Order is preserved; deterministic by
    ``seed``. Use it to turn a validation split into a retrieval task.
    """
    unknown = [r.path for r in records if r.pid < 0]
    if unknown:
        raise ValueError(f"split_query_gallery needs labelled records; {len(unknown)} have "
                         f"pid -1, e.g. {unknown[0]}. Filter them out first")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r.pid, r.camid), []).append(i)
    cameras_of: dict[int, int] = {}
    for pid, _ in groups:
        cameras_of[pid] = cameras_of.get(pid, 0) + 1
    rng = np.random.default_rng(seed)
    query_index = {members[int(rng.integers(len(members)))]
                   for (pid, _), members in sorted(groups.items())
                   if cameras_of[pid] >= 2 and len(members) >= 2}
    query = [r for i, r in enumerate(records) if i in query_index]
    gallery = [r for i, r in enumerate(records) if i not in query_index]
    return query, gallery


def _make_dataset(name: str, root: str, train: list[Record], query: list[Record],
                  gallery: list[Record], val: list[Record] | None = None) -> ReIDDataset:
    val = val or []
    camids = [r.camid for split in (train, query, gallery, val) for r in split]
    return ReIDDataset(name=name, root=root, train=_relabel_sorted(train), query=query,
                       gallery=gallery, num_cameras=max(camids) + 1, val=val)


def _relabel_sorted(records: list[Record]) -> list[Record]:
    known = sorted({r.pid for r in records if r.pid >= 0})
    label = {pid: i for i, pid in enumerate(known)}
    return [r._replace(pid=label.get(r.pid, -1)) for r in records]


def _require_dir(path: str, what: str, layout_hint: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder not found: {path}. Expected layout: "
                                f"{layout_hint}. Pass the dataset root folder as root=")


def _malformed_error(folder: str, bad: list[str], total: int, expected: str) -> ValueError:
    shown = ", ".join(repr(b) for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return ValueError(f"malformed file name(s) {shown} ({len(bad)} of {total} files) in "
                      f"{folder}: expected {expected}. Rename or remove these files")


# ---------------------------------------------------------------- folder layouts

@dataclass(frozen=True)
class _FolderNaming:
    """How one folder-style layout names its images."""

    pattern: re.Pattern  # groups: pid, camera (1-based)
    expected: str        # human description used in error messages


_MARKET_NAMING = _FolderNaming(
    re.compile(r"^(-1|\d+)_c(\d+)s\d+_\d+_\d+\.jpg$"),
    "Market-1501 names like '0002_c1s1_000451_03.jpg' (PID_cCAMsSEQ_FRAME_BOX.jpg; "
    "PID -1 = junk, 0 = distractor; CAM counts from 1)")
_DUKE_NAMING = _FolderNaming(
    re.compile(r"^(\d+)_c(\d+)_f\d+\.jpg$"),
    "DukeMTMC-reID names like '0001_c2_f0046182.jpg' (PID_cCAM_fFRAME.jpg; CAM counts from 1)")


def _read_folder(folder: str, naming: _FolderNaming, *, drop_junk: bool) -> list[Record]:
    """Records of the ``*.jpg`` files of ``folder`` in sorted name order.

    Non-JPEG files (``Thumbs.db``, ...) are ignored; a malformed ``.jpg`` name is an error.
    """
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".jpg"))
    if not names:
        raise ValueError(f"no .jpg images in {folder}: expected {naming.expected}")
    records, bad = [], []
    for name in names:
        match = naming.pattern.match(name)
        if match is None or int(match.group(2)) < 1:
            bad.append(name)
            continue
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1 and drop_junk:
            continue
        records.append(Record(os.path.join(folder, name), pid, cam - 1))
    if bad:
        raise _malformed_error(folder, bad, len(names), naming.expected)
    return records


def _folder_dataset(name: str, root: str, subdir: str, naming: _FolderNaming) -> ReIDDataset:
    root = os.fspath(root)
    base = os.path.join(root, subdir) if os.path.isdir(os.path.join(root, subdir)) else root
    hint = f"ROOT/bounding_box_train, ROOT/query, ROOT/bounding_box_test (or ROOT/{subdir}/...)"
    splits = {}
    for split, folder in (("train", "bounding_box_train"), ("query", "query"),
                          ("gallery", "bounding_box_test")):
        path = os.path.join(base, folder)
        _require_dir(path, f"{name} {split}", hint)
        splits[split] = _read_folder(path, naming, drop_junk=True)
    dataset = _make_dataset(name, base, splits["train"], splits["query"], splits["gallery"])
    warn_if_unexpected(dataset)  # only names with published counts (not "synthetic")
    return dataset


def load_market1501(root: str | os.PathLike, *, name: str = "market1501") -> ReIDDataset:
    """Market-1501 (Zheng et al., ICCV 2015).

    Layout: ``root/{bounding_box_train,query,bounding_box_test}/*.jpg`` (``root`` may also
    hold a ``Market-1501-v15.09.15`` folder with them). Names ``0002_c1s1_000451_03.jpg``
    = PID_cCAMsSEQ_FRAME_BOX; junk (pid -1) is dropped, distractors (pid 0) are kept.

    Expected counts for the full dataset: 751 train identities / 12,936 train images,
    3,368 query images (750 identities), 15,913 gallery images (751 identities plus
    2,793 distractors; the folder's 19,732 files include 3,819 junk images), 6 cameras.
    Other counts give a :class:`~timm_reid.data.published.DatasetCountWarning`.
    """
    return _folder_dataset(name, root, "Market-1501-v15.09.15", _MARKET_NAMING)


def load_dukemtmc(root: str | os.PathLike) -> ReIDDataset:
    """DukeMTMC-reID (Ristani et al., ECCVW 2016; Zheng et al., ICCV 2017).

    Layout: ``root/{bounding_box_train,query,bounding_box_test}/*.jpg`` (``root`` may also
    hold a ``DukeMTMC-reID`` folder with them). Names ``0001_c2_f0046182.jpg`` =
    PID_cCAM_fFRAME.

    Expected counts: 702 train identities / 16,522 train images, 2,228 query images,
    17,661 gallery images (1,110 identities incl. 408 gallery-only distractor ids), 8 cameras.
    Other counts give a :class:`~timm_reid.data.published.DatasetCountWarning`.
    """
    return _folder_dataset("dukemtmc", root, "DukeMTMC-reID", _DUKE_NAMING)


# ---------------------------------------------------------------- MSMT17

_MSMT_VERSIONS = {"v1": ("MSMT17_V1", "train", "test"),
                  "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2")}
_MSMT_NAME = re.compile(r"^\d+_\d+_(\d+)_[^_]+_\d+_\d+\.jpg$")
_MSMT_EXPECTED = ("MSMT17 list lines like '0000/0000_000_01_0303morning_0015_0.jpg 0' "
                  "(FOLDER/PID_INDEX_CAM_DATETIME_FRAME_N.jpg PID; CAM counts from 1)")


def _find_msmt_root(root: str, version: str | None) -> tuple[str, str]:
    """Return (folder holding list_*.txt, version)."""
    versions = [version] if version else list(_MSMT_VERSIONS)
    if version is not None and version not in _MSMT_VERSIONS:
        raise ValueError(f"unknown MSMT17 version {version!r}; valid: 'v1', 'v2' or None "
                         "(auto-detect)")
    found = []
    for v in versions:
        top, train_dir, _ = _MSMT_VERSIONS[v]
        for base in (root, os.path.join(root, top)):
            if os.path.isdir(os.path.join(base, train_dir)):
                found.append((base, v))
    if not found:
        raise FileNotFoundError(
            f"MSMT17 not found under {root}: expected ROOT/train, ROOT/test and "
            "ROOT/list_{train,val,query,gallery}.txt (v1) or ROOT/mask_train_v2, "
            "ROOT/mask_test_v2 and the list files (v2), optionally inside "
            "ROOT/MSMT17_V1 or ROOT/MSMT17_V2")
    if len(found) > 1:
        raise ValueError(f"both MSMT17 versions found under {root}: {found}; pass "
                         "version='v1' or version='v2'")
    return found[0]


def _read_msmt_list(list_path: str, image_dir: str) -> list[Record]:
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"MSMT17 list file not found: {list_path}")
    records, bad, missing = [], [], []
    with open(list_path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    for line in lines:
        fields = line.split()
        match = _MSMT_NAME.match(os.path.basename(fields[0])) if len(fields) == 2 else None
        if match is None or not fields[1].isdigit() or int(match.group(1)) < 1:
            bad.append(line)
            continue
        path = os.path.join(image_dir, fields[0])
        if not os.path.isfile(path):
            missing.append(path)
        records.append(Record(path, int(fields[1]), int(match.group(1)) - 1))
    if bad:
        raise _malformed_error(list_path, bad, len(lines), _MSMT_EXPECTED)
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {list_path} do not exist, "
                                f"e.g. {missing[0]}; check that the list matches {image_dir}")
    return records


def load_msmt17(root: str | os.PathLike, *, version: str | None = None) -> ReIDDataset:
    """MSMT17 (Wei et al., CVPR 2018), v1 or v2 (faces masked), auto-detected.

    Layout (as distributed; torchreid's convention): ``MSMT17_V1/{train,test}/`` (v1) or
    ``MSMT17_V2/{mask_train_v2,mask_test_v2}/`` (v2), each next to ``list_train.txt``,
    ``list_val.txt``, ``list_query.txt`` and ``list_gallery.txt``. ``root`` is the folder
    holding the list files or its parent. List lines are ``RELPATH PID`` with RELPATH like
    ``0000/0000_000_01_0303morning_0015_0.jpg`` (PID_INDEX_CAM_DATETIME_FRAME_N); the camera
    is the third ``_`` field (1..15). train/val images live in the train folder, query and
    gallery in the test folder. Test pids restart at 0: they are not training pids.

    Expected counts: train 30,248 images + val 2,373 images (1,041 identities together;
    val pids are training identities, kept as listed), query 11,659 and gallery 82,161
    images (3,060 identities), 15 cameras. ``val`` is exposed when ``list_val.txt`` exists.
    Other counts (train and val compared together) give a
    :class:`~timm_reid.data.published.DatasetCountWarning`.
    """
    base, version = _find_msmt_root(os.fspath(root), version)
    _, train_dir, test_dir = _MSMT_VERSIONS[version]
    train_dir, test_dir = os.path.join(base, train_dir), os.path.join(base, test_dir)
    _require_dir(test_dir, "MSMT17 test", f"{base}/{os.path.basename(test_dir)}")
    val_list = os.path.join(base, "list_val.txt")
    val = _read_msmt_list(val_list, train_dir) if os.path.isfile(val_list) else []
    dataset = _make_dataset(
        "msmt17", base,
        train=_read_msmt_list(os.path.join(base, "list_train.txt"), train_dir),
        query=_read_msmt_list(os.path.join(base, "list_query.txt"), test_dir),
        gallery=_read_msmt_list(os.path.join(base, "list_gallery.txt"), test_dir),
        val=val)
    warn_if_unexpected(dataset)
    return dataset


# ---------------------------------------------------------------- CSV

_CSV_EXPECTED = "rows 'path,camid' or 'path,camid,pid' (camid a 0-based int, pid an int or empty)"


def _read_csv(csv_path: str, *, need_pid: bool) -> list[Record]:
    """Rows ``path,camid[,pid]``; an optional header row names the columns."""
    # utf-8-sig: files saved by Excel and many Windows tools start with a byte-order mark.
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [(line_no, row) for line_no, row in enumerate(csv.reader(f), 1)
                if row and any(cell.strip() for cell in row)]
    if rows and [c.strip().lower() for c in rows[0][1]] in (["path", "camid"],
                                                             ["path", "camid", "pid"]):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"no rows in {csv_path}: expected {_CSV_EXPECTED}")
    base = os.path.dirname(os.path.abspath(csv_path))
    records, bad = [], []
    for line_no, row in rows:
        problem = _csv_row_problem(row, need_pid)
        if problem:
            bad.append(f"line {line_no} ({','.join(row)}): {problem}")
        else:
            records.append(_csv_record(row, base))
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise ValueError(f"{len(bad)} of {len(rows)} rows of {csv_path} are malformed: {shown}. "
                         f"Expected {_CSV_EXPECTED}; fix or remove these rows")
    missing = [r.path for r in records if not os.path.isfile(r.path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {csv_path} do not exist, "
                                f"e.g. {missing[0]}; relative paths are resolved against "
                                f"{base}")
    return records


def _csv_row_problem(row: list[str], need_pid: bool) -> str:
    """What is wrong with one row (column 1 path, 2 camid, 3 pid), or "" if nothing."""
    cells = [c.strip() for c in row]
    if len(cells) not in (2, 3):
        return f"{len(cells)} columns, expected 2 or 3"
    if not cells[0]:
        return "column 1 (path) is empty"
    if not cells[1].isdigit():
        return f"column 2 (camid) {cells[1]!r} is not a non-negative int"
    pid_text = cells[2] if len(cells) == 3 else ""
    if pid_text and not re.fullmatch(r"-?\d+", pid_text):
        return f"column 3 (pid) {pid_text!r} is not an int"
    if need_pid and (not pid_text or int(pid_text) < 0):
        return "column 3 (pid) is required in query/gallery/val files"
    return ""


def _csv_record(row: list[str], base: str) -> Record:
    cells = [c.strip() for c in row]
    pid_text = cells[2] if len(cells) == 3 else ""
    return Record(os.path.join(base, cells[0]), int(pid_text) if pid_text else -1, int(cells[1]))


def load_csv(root: str | os.PathLike) -> ReIDDataset:
    """Your own camera data from CSV files ``path,camid[,pid]``.

    ``root`` is either one CSV file (training data only, typically unlabelled) or a folder
    with ``train.csv`` and optionally ``query.csv`` + ``gallery.csv`` (both or neither) and
    ``val.csv``. A header row ``path,camid[,pid]`` is optional; relative paths are resolved
    against the CSV file's folder; ``camid`` is a 0-based int; a missing or empty pid means
    unknown (-1, training only: query/gallery/val rows need a pid).

    Expected counts: whatever the files list, one record per row.
    """
    root = os.fspath(root)
    if os.path.isfile(root):
        return _make_dataset("csv", root, _read_csv(root, need_pid=False), [], [])
    train_csv = os.path.join(root, "train.csv")
    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"CSV dataset not found: {root} is neither a CSV file nor a "
                                "folder with train.csv (+ optional query.csv, gallery.csv, "
                                "val.csv)")
    optional = {s: os.path.join(root, f"{s}.csv") for s in ("query", "gallery", "val")}
    present = {s: p for s, p in optional.items() if os.path.isfile(p)}
    if ("query" in present) != ("gallery" in present):
        raise FileNotFoundError(f"{root} has only one of query.csv and gallery.csv; "
                                "provide both (for evaluation) or neither")
    splits = {s: _read_csv(p, need_pid=True) for s, p in present.items()}
    return _make_dataset("csv", root, _read_csv(train_csv, need_pid=False),
                         splits.get("query", []), splits.get("gallery", []),
                         splits.get("val", []))
