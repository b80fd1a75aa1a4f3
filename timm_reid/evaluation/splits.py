"""One evaluation of a model on a dataset's test split, for every protocol: training, pretraining
and the evaluate command line all call :func:`evaluate_split`.

Protocols (:data:`PROTOCOLS`; a training method names its own in ``EVALUATION``):

- ``"reid"``: Market-1501 query vs gallery (same-identity same-camera gallery images removed;
  :func:`~timm_reid.evaluation.evaluate`) plus the same-camera top-1 share, and the ``val`` split
  against itself when the dataset has one;
- ``"sysumm01"``: SYSU-MM01 single-shot over trial galleries drawn from ``dataset.gallery``
  (:func:`~timm_reid.evaluation.evaluate_sysumm01`; ``mode="all"`` or ``"indoor"``, ``trials``);
- ``"regdb"``: RegDB, ``dataset.query`` visible and ``dataset.gallery`` thermal
  (:func:`~timm_reid.evaluation.evaluate_regdb`; ``direction``).

Features are flip-averaged and L2-normalised, extracted in one pass over query then gallery
(under torchrun each process extracts its share); metrics are plain Python values (JSON-ready).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset
from ..distributed import LOCAL
from .features import extract_features
from .metrics import evaluate, same_camera_top1
from .visible_infrared import evaluate_regdb, evaluate_sysumm01

__all__ = ["PROTOCOLS", "evaluate_split", "extract_records", "format_metrics"]

PROTOCOLS = ("reid", "sysumm01", "regdb")


def extract_records(model, records, *, transform, batch_size=128, workers=0, normalize=True, camera_aggregate=False,
                    num_cameras=None, progress=False, dist=LOCAL):
    """Flip-averaged features of ``records`` as numpy arrays ``(features, pids, camids)``; under
    torchrun each process extracts its share of ``records`` and every process gets all rows."""
    records = list(records)[dist.shard(len(records))] if dist.active else records
    loader = DataLoader(ImageDataset(records, transform), batch_size=batch_size, num_workers=workers)
    feats, pids, camids = extract_features(model, loader, flip=True, normalize=normalize,
                                           camera_aggregate=camera_aggregate, num_cameras=num_cameras,
                                           progress=progress)
    if dist.active:  # the collectives need the tensors on the process's device
        device = next(model.parameters()).device
        feats, pids, camids = (dist.gather_rows(t.to(device)).cpu() for t in (feats, pids, camids))
    return feats.numpy(), pids.numpy(), camids.numpy()


def evaluate_split(model, dataset, *, transform, protocol="reid", batch_size=128, workers=0, camera_aggregate=False,
                   num_cameras=None, keep_features=False, val=True, progress=False, dist=LOCAL, **protocol_options):
    """``{"test": metrics}`` of ``model`` on ``dataset``'s query/gallery split (a
    :class:`~timm_reid.data.ReIDDataset`) under ``protocol``; ``"reid"`` adds ``{"val": metrics}``
    when the dataset has a validation split and ``val``, and with ``keep_features`` the test
    features as ``"_features": (features, pids, camids)``. ``protocol_options`` go to the
    protocol's function (``mode``, ``trials``; ``direction``). A dataset without a query or
    gallery gives no ``"test"`` entry."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "reid" and protocol_options:
        raise TypeError(f"the reid protocol takes no options, got {', '.join(protocol_options)}")
    extract = dict(transform=transform, batch_size=batch_size, workers=workers, camera_aggregate=camera_aggregate,
                   num_cameras=num_cameras, progress=progress, dist=dist)
    out = {}
    if dataset.query and dataset.gallery:
        out["test"] = _evaluate_pair(model, dataset.query, dataset.gallery, protocol, extract, keep_features,
                                     protocol_options)
        if keep_features:
            out["_features"] = out["test"].pop("_features")
    if protocol == "reid" and val and getattr(dataset, "val", None):
        out["val"] = _evaluate_pair(model, dataset.val, dataset.val, protocol, extract, False, {})
    return out


def _evaluate_pair(model, query, gallery, protocol, extract, keep_features, options):
    records = list(query) + ([] if gallery is query else list(gallery))
    feats, pids, camids = extract_records(model, records, **extract)
    nq = len(query)
    qf, qp, qc = feats[:nq], pids[:nq], camids[:nq]
    gf, gp, gc = (qf, qp, qc) if gallery is query else (feats[nq:], pids[nq:], camids[nq:])
    if protocol == "sysumm01":
        res = evaluate_sysumm01(qf, gf, query, gallery, **options)
    elif protocol == "regdb":
        res = evaluate_regdb(qf, gf, query, gallery, **options)
    else:
        res = evaluate(query_features=torch.as_tensor(qf), gallery_features=torch.as_tensor(gf), q_pids=qp,
                       g_pids=gp, q_camids=qc, g_camids=gc)
    metrics = {k: _plain(v) for k, v in res.items()}
    if protocol == "reid":  # visible-infrared queries and galleries never share a camera
        metrics["same_camera_top1"] = same_camera_top1(qf, gf, qp, gp, qc, gc)
    if keep_features:
        metrics["_features"] = (feats, pids, camids)
    return metrics


def _plain(v):
    if torch.is_tensor(v):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.tolist() if v.ndim else v.item()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def format_metrics(m):
    """``mAP=.. rank1=.. same_camera_top1=..`` in percent, of the keys present."""
    return " ".join(f"{k}={100 * m[k]:.1f}" for k in ("mAP", "rank1", "same_camera_top1") if k in m)
