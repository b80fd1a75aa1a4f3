"""The clustering features every method uses (shared harness part); the extraction of records is
:func:`timm_reid.evaluation.splits.extract_records`."""

import numpy as np

from timm_reid.distributed import LOCAL
from timm_reid.evaluation.splits import extract_records as extract  # the one extraction of records


def l2_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def center_per_camera(features, camids):
    """Subtract each camera's mean feature, then L2-normalise (camera-aware centring)."""
    out = features.copy()
    for c in np.unique(camids):
        out[camids == c] -= out[camids == c].mean(0, keepdims=True)
    return l2_normalize(out)


def clustering_features(net, train, *, transform, batch_size, workers, center, progress, dist=LOCAL):
    """Raw pooled features (for head scores and proxies) and the L2-normalised, optionally
    camera-centred features that are clustered; with pids and camids."""
    raw, pids, camids = extract(net, train, transform=transform, batch_size=batch_size, workers=workers,
                                normalize=False, progress=progress, dist=dist)
    feats = l2_normalize(raw)
    if center:
        feats = center_per_camera(feats, camids)
    return raw, feats, pids, camids
