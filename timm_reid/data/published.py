"""Published sizes of the public benchmarks, to catch partial or mis-preprocessed copies.

A copy with fewer images than published (an interrupted extraction, a converted folder, junk
images kept or gallery distractors dropped) trains and evaluates without any error but gives
numbers that cannot be compared with papers. Loaders call :func:`warn_if_unexpected`; the
comparison is part of :meth:`ReIDDataset.summary`, which training runs write to their log.

Counts are of the records a loader returns: Market-1501's 3,819 junk gallery images (file name
pid -1) are dropped, so its 19,732 ``bounding_box_test`` files give 15,913 gallery records
(2,793 of them distractors, pid 0). MSMT17's training identities span ``list_train.txt``
(30,248 images) and ``list_val.txt`` (2,373 images); some copies merge both into
``list_train.txt``, so the two are compared together (32,621 images of 1,041 identities).
"""
from __future__ import annotations

import warnings

__all__ = ["PUBLISHED_COUNTS", "DatasetCountWarning", "count_differences", "warn_if_unexpected"]

# train_images counts train + val records; train_ids the distinct known pids over both.
PUBLISHED_COUNTS: dict[str, dict[str, int]] = {
    "market1501": {"train_images": 12_936, "train_ids": 751, "query_images": 3_368,
                   "gallery_images": 15_913, "cameras": 6},
    "dukemtmc": {"train_images": 16_522, "train_ids": 702, "query_images": 2_228,
                 "gallery_images": 17_661, "cameras": 8},
    "msmt17": {"train_images": 32_621, "train_ids": 1_041, "query_images": 11_659,
               "gallery_images": 82_161, "cameras": 15},
    # SYSU-MM01's gallery is drawn per trial from the visible test images (not counted here).
    "sysumm01": {"train_images": 34_167, "train_ids": 395, "query_images": 3_803, "cameras": 6},
    # RegDB, per trial (each of the 10 splits has these sizes).
    "regdb": {"train_images": 4_120, "train_ids": 206, "query_images": 2_060,
              "gallery_images": 2_060, "cameras": 2},
}

_LABELS = {"train_images": "train images", "train_ids": "train identities",
           "query_images": "query images", "gallery_images": "gallery images", "cameras": "cameras"}


class DatasetCountWarning(UserWarning):
    """A known dataset whose image, identity or camera counts differ from the published ones."""


def _found_counts(dataset) -> dict[str, int]:
    train = list(dataset.train) + list(getattr(dataset, "val", []) or [])
    return {"train_images": len(train), "train_ids": len({r.pid for r in train if r.pid >= 0}),
            "query_images": len(dataset.query), "gallery_images": len(dataset.gallery),
            "cameras": dataset.num_cameras}


def count_differences(dataset) -> list[str]:
    """``["train images: found 100, published 12,936", ...]``; empty when all match or the
    dataset (by ``dataset.name``) has no published counts."""
    expected = PUBLISHED_COUNTS.get(dataset.name)
    if expected is None:
        return []
    found = _found_counts(dataset)
    return [f"{_LABELS[key]}: found {found[key]:,}, published {value:,}"
            for key, value in expected.items() if found[key] != value]


def warn_if_unexpected(dataset) -> None:
    """Warn (:class:`DatasetCountWarning`) when a known dataset's counts differ from the paper's."""
    differences = count_differences(dataset)
    if differences:
        warnings.warn(
            f"{dataset.name} at {dataset.root} does not have the published size ("
            + "; ".join(differences) + "). A partial or differently preprocessed copy gives results "
            "that are not comparable with published ones; check the download and extraction",
            DatasetCountWarning, stacklevel=3)
