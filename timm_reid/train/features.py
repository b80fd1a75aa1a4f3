"""Feature extraction and the clustering features every method uses (shared harness part)."""

import numpy as np
from torch.utils.data import DataLoader

from timm_reid.data import ImageDataset
from timm_reid.distributed import LOCAL
from timm_reid.evaluation import extract_features


def extract(net, records, *, transform, batch_size, workers, normalize=True, camera_aggregate=False,
            num_cameras=None, progress=False, dist=LOCAL):
    """Flip-averaged features of ``records`` as numpy arrays ``(features, pids, camids)``; under
    torchrun each process extracts its share of ``records`` and every process gets all rows."""
    records = list(records)[dist.shard(len(records))] if dist.active else records
    loader = DataLoader(ImageDataset(records, transform), batch_size=batch_size, num_workers=workers)
    feats, pids, camids = extract_features(net, loader, flip=True, normalize=normalize,
                                           camera_aggregate=camera_aggregate, num_cameras=num_cameras,
                                           progress=progress)
    if dist.active:  # the collectives need the tensors on the process's device
        device = next(net.parameters()).device
        feats, pids, camids = (dist.gather_rows(t.to(device)).cpu() for t in (feats, pids, camids))
    return feats.numpy(), pids.numpy(), camids.numpy()


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
