"""Visible-infrared test protocols: SYSU-MM01 (all-search, indoor-search) and RegDB.

SYSU-MM01 (Wu et al., ICCV 2017, as its released evaluation and the VI-ReID papers run it):

- queries: every infrared image of the test identities (cameras 3 and 6, both modes);
- gallery, per trial: one visible image per identity and camera (single-shot), cameras 1, 2, 4, 5
  (all-search) or 1, 2 (indoor-search), drawn as the reference code draws it: Python's
  ``random`` seeded with the trial number, identities in ascending order, cameras in ascending
  order, ``random.choice`` over the pair's image paths in sorted order; 10 trials averaged;
- camera 3 (indoor infrared) shares its room with camera 2: a query from camera 3 never sees a
  gallery image of camera 2 (all of them, whatever their identity);
- mAP and mINP over the gallery images that remain (:func:`timm_reid.evaluation.evaluate`; the
  Market-1501 same-camera rule removes nothing here, query and gallery cameras differ);
- CMC / rank-k over *distinct identities*: a gallery identity counts once, at its best-ranked
  image (the released code's CMC, which the papers report). With one image per identity and
  camera this differs from the per-image CMC whenever an identity's images from two cameras are
  ranked before the true match.

RegDB (Nguyen et al., Sensors 2017): one visible and one thermal camera; the query is every test
image of one modality, the gallery every test image of the other (visible-to-thermal or
thermal-to-visible), the per-image Market-1501 metrics; results average the 10 train/test splits,
each trained on its own (``load_regdb(trial=...)``).

Distances are cosine distances of L2-normalised features, ties broken by gallery order.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cluster._checks import as_float_matrix, check_no_nan
from .metrics import evaluate

__all__ = ["SYSU_EXCLUDED_PAIRS", "SYSU_MODES", "evaluate_regdb", "evaluate_sysumm01",
           "identity_cmc", "single_shot_gallery"]

# 0-based camera ids: visible gallery cameras of each search mode.
SYSU_MODES = {"all": (0, 1, 3, 4), "indoor": (0, 1)}
# (query camid, gallery camid) pairs the protocol removes: camera 3 never sees camera 2.
SYSU_EXCLUDED_PAIRS = ((2, 1),)
REGDB_DIRECTIONS = ("visible-to-thermal", "thermal-to-visible")
_RANKS = (1, 5, 10, 20)


def single_shot_gallery(gallery: Sequence, trial: int, *, cameras: Sequence[int] | None = None) -> list[int]:
    """Indices into ``gallery`` (records with ``path``, ``pid``, ``camid``) of trial ``trial``'s
    single-shot gallery: one image per (identity, camera) of ``cameras`` (default: all), drawn as
    SYSU-MM01's reference code does (see the module docstring), so trial ``t`` here is its trial
    ``t`` on the same files."""
    groups: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for i, r in enumerate(gallery):
        if cameras is None or r.camid in cameras:
            groups.setdefault((r.pid, r.camid), []).append((r.path, i))
    draw = random.Random(trial)
    return sorted(draw.choice(sorted(groups[key]))[1] for key in sorted(groups))


def identity_cmc(distmat: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the rank of its identity among the *distinct* gallery identities ordered by
    their best-ranked image (ties: lower gallery index first); 0 where the query's identity is
    not in the gallery. Returns ``(ranks (Q,), valid (Q,) bool)``."""
    identities, g_index = torch.unique(g_pids, return_inverse=True)
    order = torch.argsort(distmat, dim=1, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    best = torch.full((distmat.shape[0], identities.numel()), order.shape[1], dtype=torch.long,
                      device=distmat.device)
    best.scatter_reduce_(1, g_index.expand_as(position), position, reduce="amin")
    slot = torch.searchsorted(identities, q_pids).clamp_(max=identities.numel() - 1)
    valid = identities[slot] == q_pids
    own = best.gather(1, slot[:, None])
    return (best < own).sum(1) + 1, valid


def _cosine_distances(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """float32, as :func:`~timm_reid.evaluation.evaluate` computes them from features."""
    return 1.0 - F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).t()


def _features(features, name: str) -> torch.Tensor:
    matrix = as_float_matrix(features, name)
    check_no_nan(matrix, name)
    return matrix


def _labels(records: Sequence, field: str) -> torch.Tensor:
    return torch.as_tensor([getattr(r, field) for r in records], dtype=torch.long)


def _one_trial(dist, q_pids, q_cams, g_pids, g_cams, excluded, max_rank):
    """Sums of AP, INP and the distinct-identity first-rank histogram over valid queries."""
    totals = {"ap": 0.0, "inp": 0.0, "valid": 0, "first": torch.zeros(max_rank, dtype=torch.float64)}
    for camera in torch.unique(q_cams).tolist():
        rows = q_cams == camera
        barred = [g for q, g in excluded if q == camera]
        cols = ~torch.isin(g_cams, torch.as_tensor(barred, dtype=g_cams.dtype))
        block = dist[rows][:, cols]
        ranks, valid = identity_cmc(block, q_pids[rows], g_pids[cols])
        if not bool(valid.any()):
            continue
        kept = rows.nonzero().squeeze(1)[valid]
        result = evaluate(dist[kept][:, cols], q_pids=q_pids[kept], g_pids=g_pids[cols],
                          q_camids=q_cams[kept], g_camids=g_cams[cols], max_rank=max_rank)
        count = result["num_valid_queries"]
        totals["ap"] += result["mAP"] * count
        totals["inp"] += result["mINP"] * count
        totals["valid"] += count
        first = ranks[valid].clamp(max=max_rank + 1) - 1
        totals["first"] += torch.bincount(first, minlength=max_rank + 1)[:max_rank].double()
    if totals["valid"] == 0:
        raise ValueError("no valid query: no query identity has a gallery image in this trial; "
                         "check that query and gallery pids use the same ids")
    return totals


def _summary(per_trial: list[dict], max_rank: int, protocol: str) -> dict:
    cmc = np.mean([t["cmc"] for t in per_trial], axis=0)
    result = {"protocol": protocol, "trials": len(per_trial),
              "mAP": float(np.mean([t["mAP"] for t in per_trial])),
              "mINP": float(np.mean([t["mINP"] for t in per_trial]))}
    result.update({f"rank{k}": float(cmc[k - 1]) for k in _RANKS if k <= max_rank})
    result["cmc"] = cmc
    result["per_trial"] = [{k: v for k, v in t.items() if k != "cmc"} for t in per_trial]
    return result


def evaluate_sysumm01(query_features, gallery_features, query: Sequence, gallery: Sequence, *,
                      mode: str = "all", trials: int = 10, max_rank: int = 20,
                      excluded: Sequence[tuple[int, int]] = SYSU_EXCLUDED_PAIRS) -> dict:
    """SYSU-MM01 single-shot evaluation (module docstring), averaged over ``trials`` galleries.

    Args:
        query_features, gallery_features: (Q, D) features of ``dataset.query`` and of the whole
            ``dataset.gallery`` pool (``load_sysumm01``); each trial selects its gallery rows.
        query, gallery: the records (``pid``, ``camid``, ``path``) in the same order.
        mode: ``"all"`` (visible cameras 1, 2, 4, 5) or ``"indoor"`` (1, 2).
        excluded: (query camid, gallery camid) pairs removed from the ranking (0-based;
            default camera 3 -> camera 2, the protocol's rule).

    Returns:
        dict with "mAP", "mINP", "rank1", "rank5", "rank10", "rank20" (trial means, fractions),
        "cmc" (distinct-identity CMC, length ``max_rank``), "per_trial" (mAP, mINP, rank-k and
        gallery size of each trial), "trials", "protocol" (e.g. ``"sysumm01-all-single-shot"``).
    """
    if mode not in SYSU_MODES:
        raise ValueError(f"unknown SYSU-MM01 mode {mode!r}; choose 'all' or 'indoor'")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int (the protocol averages 10), got {trials!r}")
    query_features = _features(query_features, "query_features")
    gallery_features = _features(gallery_features, "gallery_features")
    if (query_features.shape[0], gallery_features.shape[0]) != (len(query), len(gallery)):
        raise ValueError(f"got {query_features.shape[0]} query and {gallery_features.shape[0]} gallery "
                         f"feature rows for {len(query)} query and {len(gallery)} gallery records; "
                         "extract the features of exactly these records, in order")
    cameras = SYSU_MODES[mode]
    if not any(r.camid in cameras for r in gallery):
        raise ValueError(f"no gallery image from the {mode}-search cameras "
                         f"{[c + 1 for c in cameras]}; is this a SYSU-MM01 gallery?")
    q_pids, q_cams = _labels(query, "pid"), _labels(query, "camid")
    pool_pids, pool_cams = _labels(gallery, "pid"), _labels(gallery, "camid")
    shared = sorted(set(q_cams.tolist()) & set(pool_cams.tolist()))
    if shared:
        raise ValueError(f"query and gallery share camera(s) {[c + 1 for c in shared]}: the "
                         "visible-infrared protocol queries infrared cameras against visible ones")
    dist = _cosine_distances(query_features, gallery_features)
    per_trial = []
    for trial in range(trials):
        picked = torch.as_tensor(single_shot_gallery(gallery, trial, cameras=cameras))
        g_pids, g_cams = pool_pids[picked], pool_cams[picked]
        sums = _one_trial(dist[:, picked], q_pids, q_cams, g_pids, g_cams, excluded, max_rank)
        cmc = (torch.cumsum(sums["first"], 0) / sums["valid"]).numpy()
        row = {"trial": trial, "gallery_size": int(picked.numel()), "num_valid_queries": sums["valid"],
               "mAP": sums["ap"] / sums["valid"], "mINP": sums["inp"] / sums["valid"], "cmc": cmc}
        row.update({f"rank{k}": float(cmc[k - 1]) for k in _RANKS if k <= max_rank})
        per_trial.append(row)
    return _summary(per_trial, max_rank, f"sysumm01-{mode}-single-shot")


def evaluate_regdb(visible_features, thermal_features, visible: Sequence, thermal: Sequence, *,
                   direction: str = "visible-to-thermal", max_rank: int = 20) -> dict:
    """RegDB evaluation of one trial: every test image of one modality queries every test image
    of the other (``direction`` ``"visible-to-thermal"`` or ``"thermal-to-visible"``).

    ``visible`` / ``thermal`` are ``dataset.query`` / ``dataset.gallery`` of ``load_regdb``.
    Returns :func:`timm_reid.evaluation.evaluate`'s dict plus "protocol" (``"regdb-<direction>"``).
    """
    if direction not in REGDB_DIRECTIONS:
        raise ValueError(f"unknown RegDB direction {direction!r}; choose one of {', '.join(REGDB_DIRECTIONS)}")
    sides = [(visible_features, visible), (thermal_features, thermal)]
    if direction == "thermal-to-visible":
        sides.reverse()
    (qf, q), (gf, g) = sides
    result = evaluate(query_features=qf, gallery_features=gf, q_pids=_labels(q, "pid"),
                      g_pids=_labels(g, "pid"), q_camids=_labels(q, "camid"),
                      g_camids=_labels(g, "camid"), max_rank=max_rank)
    result["protocol"] = f"regdb-{direction}"
    return result
