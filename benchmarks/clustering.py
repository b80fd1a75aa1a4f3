"""Clustering-side benchmarks: agglomerative vs sklearn, re-ranking vs a dense implementation,
cross-camera weighted Jaccard (exact chunked vs the reference row loop, and the top-k variant),
the ICE clustering step (k-reciprocal Jaccard + DBSCAN: sparse graph vs dense matrix, and a
cluster-contrast peer), the IICS intra-/inter-camera steps, and the inter-camera step's old dense
path against its condensed in-place path (`inter`).

Every measurement runs in a fresh subprocess (time, and peak RSS growth over the inputs; see
_memory.py) with --threads BLAS/OpenMP threads; rows are JSON lines with median / p20 / p80.

    python benchmarks/clustering.py [--only agglomerative,rerank,jaccard,dbscan,iics,inter] [--reps 3] [--threads 1]
    python benchmarks/clustering.py --only inter --inter-sizes 2000,4000 --dense-sizes 2000,4000 --jaccard-topk 64

Sizes: Market-1501 train (12,936 images) everywhere; agglomerative also at --large N (default
24,000) for timm-reid only - MSMT17 train (32,621) needs 3 x 4.3 GB here (float32 input,
condensed float64, SciPy's working copy) and sklearn about 18 bytes x N^2 beyond its input, more
than this shared machine allows; the JSON rows record the sizes actually run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, quantiles  # noqa: E402
from _memory import measure, run_isolated  # noqa: E402

from timm_reid.cluster import agglomerative, dbscan_jaccard, rerank, weighted_jaccard  # noqa: E402

MARKET_TRAIN, CAMERAS, CLASSES_PER_CAMERA = 12_936, 6, 600
MSMT_TRAIN, ICE_DIM = 32_621, 2048


def planted_features(n: int, dim: int = 64, seed: int = 0):
    """Unit features around n / 17 identity centres (Market: ~17 images per identity)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 17), dim, generator=gen)
    identity = torch.randint(0, centres.shape[0], (n,), generator=gen)
    feats = centres[identity] + 0.9 * torch.randn(n, dim, generator=gen)
    return torch.nn.functional.normalize(feats, dim=1)


def cosine_distances(n: int) -> torch.Tensor:
    feats = planted_features(n)
    return torch.mm(feats, feats.t()).neg_().add_(1.0)


def camera_scores(n: int) -> torch.Tensor:
    """Concatenated per-camera softmax of a cosine classifier (scale 16) over 600 classes each."""
    feats = planted_features(n)
    gen = torch.Generator().manual_seed(1)
    prototypes = torch.nn.functional.normalize(torch.randn(CAMERAS * CLASSES_PER_CAMERA, feats.shape[1], generator=gen), dim=1)
    logits = 16.0 * feats @ prototypes.t()
    return torch.softmax(logits.view(n, CAMERAS, CLASSES_PER_CAMERA), dim=-1).reshape(n, -1)


# ---------------------------------------------------------------- baselines written out here


def dense_rerank(dist: np.ndarray, k1=20, k2=6, lambda_value=0.3) -> np.ndarray:
    """The dense reference approach: N x N float16 V and Jaccard, row loops with NumPy."""
    n = dist.shape[0]
    orig = dist - dist.min(axis=0)
    orig = np.transpose(orig / orig.max(axis=0))
    v = np.zeros_like(orig, dtype=np.float16)
    rank = np.argsort(orig).astype(np.int32)
    half = int(np.around(k1 / 2))
    for i in range(n):
        forward = rank[i, :k1 + 1]
        own = forward[np.where(rank[forward, :k1 + 1] == i)[0]]
        expanded = own
        for j in own:
            cand_forward = rank[j, :half + 1]
            cand = cand_forward[np.where(rank[cand_forward, :half + 1] == j)[0]]
            if len(np.intersect1d(cand, own)) > 2 / 3 * len(cand):
                expanded = np.append(expanded, cand)
        expanded = np.unique(expanded)
        weight = np.exp(-orig[i, expanded])
        v[i, expanded] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float16)
    del rank
    inverted = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jaccard = np.zeros_like(orig, dtype=np.float16)
    for i in range(n):
        shared = np.zeros(n, dtype=np.float16)
        nonzero = np.where(v[i] != 0)[0]
        for k in nonzero:
            shared[inverted[k]] += np.minimum(v[i, k], v[inverted[k], k])
        jaccard[i] = 1 - shared / (2 - shared)
    jaccard[jaccard < 0] = 0
    return jaccard * (1 - lambda_value) + orig * lambda_value


def jaccard_row_loop(scores: torch.Tensor) -> torch.Tensor:
    """The reference loop: one row against all rows at a time."""
    n = scores.shape[0]
    out = torch.zeros(n, n)
    for i in range(n):
        abs_sub = (scores[i] - scores).abs()
        both = scores[i] + scores
        out[i] = ((both - abs_sub).sum(1) / 2) / ((both + abs_sub).sum(1) / 2)
    return out


def sklearn_average(dist: np.ndarray, n_clusters: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed",
                                   linkage="average").fit_predict(dist)


# ---------------------------------------------------------------- workers (one per process)


def work_agglomerative(method: str, n: int) -> dict:
    dist = cosine_distances(n)
    clusters = max(2, n // 17)
    if method == "sklearn":
        array = dist.numpy()
        labels, seconds, peak = measure(lambda: sklearn_average(array, clusters))
    else:
        labels, seconds, peak = measure(lambda: agglomerative(dist, n_clusters=clusters))
    return {"seconds": seconds, "peak_bytes": peak, "clusters": int(labels.max()) + 1,
            "labels_head": labels[:2000].tolist()}


def work_rerank(method: str, n: int) -> dict:
    dist = cosine_distances(n)
    if method == "dense_numpy":
        array = dist.numpy()
        out, seconds, peak = measure(lambda: dense_rerank(array))
        out = torch.from_numpy(np.asarray(out, dtype=np.float32))
    else:
        dtype = torch.float16 if method == "timm_reid_fp16" else torch.float32
        out, seconds, peak = measure(lambda: rerank(dist, dtype=dtype))
    sample = out[:16].float()
    return {"seconds": seconds, "peak_bytes": peak, "sample": sample.numpy().round(6).tolist()}


def work_jaccard(method: str, n: int) -> dict:
    scores = camera_scores(n)
    if method == "row_loop":
        out, seconds, peak = measure(lambda: jaccard_row_loop(scores))
    elif method == "exact_chunked":
        out, seconds, peak = measure(lambda: weighted_jaccard(scores))
    else:
        k = int(method.split("_")[1])
        out, seconds, peak = measure(lambda: weighted_jaccard(scores, topk=k))
    rows = min(n, 256)
    return {"seconds": seconds, "peak_bytes": peak, "head": out[:rows, :2000].numpy().tolist()}


def dense_dbscan(features: torch.Tensor) -> np.ndarray:
    """The reference ICE path: the dense N x N Jaccard matrix, then DBSCAN on it."""
    from sklearn.cluster import DBSCAN

    dist = rerank(features=features, k1=30, k2=6, lambda_value=0.0).numpy()
    return DBSCAN(eps=0.55, min_samples=4, metric="precomputed", n_jobs=1).fit_predict(dist)


def peer_knn(unit: np.ndarray, k: int):
    """The peer's neighbour lists: faiss's exact flat L2 index (as cluster-contrast), else torch."""
    try:
        import faiss
    except ImportError:
        feats = torch.from_numpy(unit)
        ranks = [torch.topk(torch.cdist(feats[s:s + 1024], feats), k, largest=False).indices
                 for s in range(0, len(unit), 1024)]
        return torch.cat(ranks).numpy(), "torch_topk"
    index = faiss.IndexFlatL2(unit.shape[1])
    index.add(unit)
    return index.search(unit, k)[1], f"faiss_{faiss.__version__}"


def cluster_contrast_jaccard(features: torch.Tensor, k1=30, k2=6, float16=True):
    """A re-implementation, written here, of cluster-contrast's faiss-based k-reciprocal Jaccard
    distance (clustercontrast/utils/faiss_rerank.py, read to learn what it does): faiss k-NN
    lists (k1 of them, self included), reciprocal sets and their expansion, row-softmax weights
    of 2 - 2 cos into a dense N x N V, query expansion, an inverted index and row loops into a
    dense N x N Jaccard matrix. float16 storage is the peer's own option (use_float16); float32
    would need 12.8 GB at MSMT17 size."""
    unit = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    n = unit.shape[0]
    dtype = np.float16 if float16 else np.float32
    ranks, knn_backend = peer_knn(unit, k1)

    def reciprocal(i, k):
        forward = ranks[i, :k + 1]
        return forward[np.where(ranks[forward, :k + 1] == i)[0]]

    half = int(np.around(k1 / 2))
    sets = [reciprocal(i, k1) for i in range(n)]
    halves = [reciprocal(i, half) for i in range(n)]
    v = np.zeros((n, n), dtype=dtype)
    for i in range(n):
        expanded = sets[i]
        for j in sets[i]:
            if len(np.intersect1d(halves[j], sets[i])) > 2 / 3 * len(halves[j]):
                expanded = np.append(expanded, halves[j])
        expanded = np.unique(expanded)
        logits = -(2.0 - 2.0 * unit[expanded] @ unit[i])
        weight = np.exp(logits - logits.max())
        v[i, expanded] = (weight / weight.sum()).astype(dtype)
    del sets, halves
    if k2 != 1:
        expanded_v = np.zeros_like(v)
        for i in range(n):
            expanded_v[i] = v[ranks[i, :k2]].mean(axis=0)
        v = expanded_v
        del expanded_v
    inverted = [np.where(v[:, k] != 0)[0] for k in range(n)]
    jaccard = np.zeros((n, n), dtype=dtype)
    for i in range(n):
        shared = np.zeros(n, dtype=dtype)
        for k in np.where(v[i] != 0)[0]:
            shared[inverted[k]] += np.minimum(v[i, k], v[inverted[k], k])
        jaccard[i] = 1 - shared / (2 - shared)
    jaccard[jaccard < 0] = 0
    return jaccard, knn_backend


def work_dbscan(method: str, n: int) -> dict:
    import resource

    feats = planted_features(n, dim=ICE_DIM)
    extra = {}
    if method == "dense":
        labels, seconds, peak = measure(lambda: dense_dbscan(feats))
    elif method == "cluster_contrast_jaccard":
        (_, extra["knn"]), seconds, peak = measure(lambda: cluster_contrast_jaccard(feats))
        labels = np.zeros(0, dtype=np.int64)  # the peer's own weights give its own partition
    else:
        labels, seconds, peak = measure(lambda: dbscan_jaccard(feats, eps=0.55, min_samples=4, k1=30, k2=6))
    return {"seconds": seconds, "peak_bytes": peak, "labels": labels.tolist(), **extra,
            "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


MSMT_CAMERAS = 15


def work_iics(method: str, n: int) -> dict:
    """IICS pseudo-labelling on planted 2048-d features: the intra-camera step over 15 cameras
    (MSMT17's count; 600 clusters per camera) or the inter-camera step (6 cameras' 600-class
    scores, 800 clusters, mu 0.02)."""
    from timm_reid.cluster import cluster_inter_camera, cluster_intra_camera

    feats = planted_features(n, dim=ICE_DIM)
    if method == "intra":
        camids = torch.randint(0, MSMT_CAMERAS, (n,), generator=torch.Generator().manual_seed(2))
        result, seconds, peak = measure(lambda: cluster_intra_camera(feats, camids))
        labels = result.labels
    else:  # Market's 6 cameras x 600 classifier outputs
        camids = torch.randint(0, CAMERAS, (n,), generator=torch.Generator().manual_seed(2))
        scores = camera_scores(n)
        labels, seconds, peak = measure(lambda: cluster_inter_camera(
            feats, scores, camids, mu=0.02, n_clusters=min(800, n // 2)))
    return {"seconds": seconds, "peak_bytes": peak, "clusters": int(labels.max()) + 1}


def dense_inter_camera(features, scores, camids, *, mu, n_clusters=None, threshold_quantile=None,
                       drop_singletons=False, jaccard_topk=None):
    """The inter-camera step as `cluster_inter_camera` did it before the condensed path: the
    N x N float32 distance, re-ranked in place, its float64 upper triangle, SciPy's linkage."""
    from timm_reid.cluster import cross_camera_distance, quantile_threshold
    from timm_reid.cluster.agglomerative import condensed_upper_triangle

    n = features.shape[0]
    dist = cross_camera_distance(features, scores, camids, mu, topk=jaccard_topk)
    rerank(dist, k1=min(20, n - 1), k2=min(6, n), lambda_value=0.3, overwrite=True)
    condensed = condensed_upper_triangle(dist)
    del dist
    target = {"n_clusters": n_clusters} if threshold_quantile is None else {
        "threshold": quantile_threshold(condensed, threshold_quantile)}
    return torch.from_numpy(agglomerative(condensed, **target, drop_singletons=drop_singletons))


def work_inter(method: str, n: int, jaccard_topk=None, threshold_quantile=None) -> dict:
    """The inter-camera step alone, old (`dense`) or new (`condensed`) path, on the inputs of the
    `iics` inter row (800 clusters, or the IIDS threshold rule with singletons dropped); labels
    returned so the driver can compare partitions."""
    from timm_reid.cluster import cluster_inter_camera

    feats = planted_features(n, dim=ICE_DIM)
    camids = torch.randint(0, CAMERAS, (n,), generator=torch.Generator().manual_seed(2))
    scores = camera_scores(n)
    step = dense_inter_camera if method == "dense" else cluster_inter_camera
    target = ({"n_clusters": min(800, n // 2)} if threshold_quantile is None else
              {"threshold_quantile": threshold_quantile, "drop_singletons": True})
    labels, seconds, peak = measure(lambda: step(feats, scores, camids, mu=0.02, **target,
                                                 jaccard_topk=jaccard_topk))
    return {"seconds": seconds, "peak_bytes": peak, "clusters": int(labels.max()) + 1,
            "labels": labels.tolist() if n <= 16_000 else None}


def inter_rows(args):
    """Old (dense N x N, float64 condensed, SciPy) vs new (float32 condensed, in place) inter-camera
    step at --inter-sizes; `dense` only at the sizes listed in --dense-sizes."""
    from sklearn.metrics import adjusted_rand_score

    sizes = [int(v) for v in args.inter_sizes.split(",")]
    dense_sizes = {int(v) for v in args.dense_sizes.split(",") if v}
    plans = [(m, n) for n in sizes for m in (["dense"] if n in dense_sizes else []) + ["condensed"]]
    extra_args = [] if args.jaccard_topk is None else ["--jaccard-topk", str(args.jaccard_topk)]
    if args.threshold_quantile is not None:
        extra_args += ["--threshold-quantile", str(args.threshold_quantile)]
    runs = {plan: [] for plan in plans}
    for _ in range(args.reps):
        for method, n in plans:
            runs[(method, n)].append(run_isolated(__file__, ["inter", method, str(n), *extra_args],
                                                  args.threads))
    for (method, n), rows in runs.items():
        extra = {"jaccard_topk": args.jaccard_topk, "threshold_quantile": args.threshold_quantile,
                 "clusters": rows[0]["clusters"], "cameras": CAMERAS,
                 "scores": CAMERAS * CLASSES_PER_CAMERA, "dim": ICE_DIM}
        dense = runs.get(("dense", n))
        if method == "condensed" and dense:
            ours, old = np.array(rows[0]["labels"]), np.array(dense[0]["labels"])
            extra.update(
                same_labels_as_dense=bool(np.array_equal(ours, old)),
                ari_vs_dense=float(adjusted_rand_score(old, ours)),
                time_ratio_dense_over_this=float(np.median([r["seconds"] for r in dense])
                                                 / np.median([r["seconds"] for r in rows])),
                memory_ratio_dense_over_this=float(np.median([r["peak_bytes"] for r in dense])
                                                   / max(1.0, np.median([r["peak_bytes"] for r in rows]))))
        summary("iics_inter", method, n, rows, args.threads, **extra)


def iics_rows(args):
    """IICS intra-camera step at MSMT17 size; the inter-camera step at --inter-n (Market size by
    default: its exact Jaccard is O(N^2 S); memory at larger sizes is the `inter` rows' subject)."""
    plans = [("intra", MSMT_TRAIN), ("inter", args.inter_n)]
    runs = bench("iics", plans, args.reps, args.threads)
    for (method, n), rows in runs.items():
        summary("iics", method, n, rows, args.threads, dim=ICE_DIM, clusters=rows[0]["clusters"],
                cameras=MSMT_CAMERAS if method == "intra" else CAMERAS)


WORKERS = {"agglomerative": work_agglomerative, "rerank": work_rerank, "jaccard": work_jaccard,
           "dbscan": work_dbscan, "iics": work_iics, "inter": work_inter}


def bench(kind: str, plans, reps: int, threads: int):
    runs = {plan: [] for plan in plans}
    for _ in range(reps):
        for method, n in plans:
            runs[(method, n)].append(run_isolated(__file__, [kind, method, str(n)], threads))
    return runs


def summary(kind, method, n, rows, threads, **extra):
    emit({"bench": kind, "method": method, "n": n, **quantiles([r["seconds"] for r in rows]),
          "peak_mb_median": float(np.median([r["peak_bytes"] for r in rows])) / 2**20,
          "reps": len(rows), "worker_threads": threads, **extra})


def agglomerative_rows(args):
    plans = [("sklearn", MARKET_TRAIN), ("timm_reid", MARKET_TRAIN), ("timm_reid", args.large)]
    runs = bench("agglomerative", plans, args.reps, args.threads)
    from sklearn.metrics import adjusted_rand_score

    reference = runs[("sklearn", MARKET_TRAIN)][0]["labels_head"]
    for (method, n), rows in runs.items():
        extra = {"condensed_float64_mb": n * (n - 1) / 2 * 8 / 2**20}
        if n == MARKET_TRAIN:
            extra["ari_vs_sklearn_first2000"] = adjusted_rand_score(reference, rows[0]["labels_head"])
        summary("agglomerative", method, n, rows, args.threads, **extra)


def rerank_rows(args):
    plans = [("dense_numpy", MARKET_TRAIN), ("timm_reid", MARKET_TRAIN), ("timm_reid_fp16", MARKET_TRAIN)]
    runs = bench("rerank", plans, args.reps, args.threads)
    reference = np.array(runs[("dense_numpy", MARKET_TRAIN)][0]["sample"])
    for (method, n), rows in runs.items():
        diff = float(np.abs(np.array(rows[0]["sample"]) - reference).max())
        summary("rerank", method, n, rows, args.threads, max_abs_diff_vs_dense_first16rows=diff)


def jaccard_rows(args):
    n = args.jaccard_n
    plans = [("row_loop", n), ("exact_chunked", n)] + [(f"topk_{k}", n) for k in (16, 64, 256)]
    plans += [(f"topk_{k}", MARKET_TRAIN) for k in (16, 64)]
    runs = bench("jaccard", plans, args.reps, args.threads)
    exact = np.array(runs[("exact_chunked", n)][0]["head"])
    for (method, size), rows in runs.items():
        extra = {"scores": CAMERAS * CLASSES_PER_CAMERA}
        if size == n:
            error = np.array(rows[0]["head"])[:, :n] - exact[:, :n]
            extra.update(max_abs_error=float(np.abs(error).max()), mean_abs_error=float(np.abs(error).mean()))
        summary("jaccard", method, size, rows, args.threads, **extra)


def dbscan_rows(args):
    """ICE clustering (eps 0.55, min samples 4, k1 30, k2 6) on 2048-d features: the sparse path at
    MSMT17 and Market size, the dense path at Market size (same partition expected), and the
    cluster-contrast peer's Jaccard step (its DBSCAN not included) at both sizes."""
    plans = [("dense", MARKET_TRAIN), ("sparse", MARKET_TRAIN), ("cluster_contrast_jaccard", MARKET_TRAIN)]
    if not args.skip_msmt:
        plans += [("sparse", MSMT_TRAIN), ("cluster_contrast_jaccard", MSMT_TRAIN)]
    runs = bench("dbscan", plans, args.reps, args.threads)
    dense = runs[("dense", MARKET_TRAIN)]
    for (method, n), rows in runs.items():
        labels = np.array(rows[0]["labels"])
        extra = {"dim": ICE_DIM, "process_peak_mb": max(r["process_peak_bytes"] for r in rows) / 2**20}
        if method == "cluster_contrast_jaccard":
            extra["knn"] = rows[0]["knn"]
        else:
            extra.update(clusters=int(labels.max()) + 1, outliers=int((labels < 0).sum()))
        if method == "sparse" and ("cluster_contrast_jaccard", n) in runs:
            peer = runs[("cluster_contrast_jaccard", n)]
            extra["time_ratio_peer_jaccard_over_this_whole_step"] = float(
                np.median([r["seconds"] for r in peer]) / np.median([r["seconds"] for r in rows]))
            extra["memory_ratio_peer_over_this"] = float(
                np.median([r["peak_bytes"] for r in peer]) / max(1.0, np.median([r["peak_bytes"] for r in rows])))
        if n == MARKET_TRAIN and method != "cluster_contrast_jaccard":
            extra["same_partition_as_dense"] = bool(np.array_equal(labels, np.array(dense[0]["labels"])))
            extra["time_ratio_dense_over_this"] = float(np.median([r["seconds"] for r in dense])
                                                        / np.median([r["seconds"] for r in rows]))
            extra["memory_ratio_dense_over_this"] = float(np.median([r["peak_bytes"] for r in dense])
                                                          / max(1.0, np.median([r["peak_bytes"] for r in rows])))
        summary("dbscan", method, n, rows, args.threads, **extra)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="agglomerative,rerank,jaccard")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large", type=int, default=24_000)
    parser.add_argument("--jaccard-n", type=int, default=2_000)
    parser.add_argument("--skip-msmt", action="store_true", help="dbscan: Market-size rows only")
    parser.add_argument("--inter-n", type=int, default=MARKET_TRAIN, help="iics: size of the inter-camera row")
    parser.add_argument("--inter-sizes", default="2000,4000,8000",
                        help="inter: sizes of the old-vs-new inter-camera rows")
    parser.add_argument("--dense-sizes", default="2000,4000,8000",
                        help="inter: sizes at which the old dense path runs too")
    parser.add_argument("--jaccard-topk", type=int, default=None,
                        help="inter: top-k sparse Jaccard (the exact one is O(N^2 S))")
    parser.add_argument("--threshold-quantile", type=float, default=None,
                        help="inter: cluster by the IIDS threshold rule (e.g. 0.0017) instead of 800 clusters")
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        kind, method, n = args.worker
        options = ({"jaccard_topk": args.jaccard_topk, "threshold_quantile": args.threshold_quantile}
                   if kind == "inter" else {})
        print(json.dumps(WORKERS[kind](method, int(n), **options)))
        return
    rows = {"agglomerative": agglomerative_rows, "rerank": rerank_rows, "jaccard": jaccard_rows,
            "dbscan": dbscan_rows, "iics": iics_rows, "inter": inter_rows}
    for kind in args.only.split(","):
        rows[kind](args)


if __name__ == "__main__":
    main()
