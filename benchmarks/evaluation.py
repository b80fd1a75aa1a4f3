"""evaluate() vs the common full-argsort NumPy evaluation (torchreid-style), MSMT17 sizes.

Data: planted matches - identity centres plus noise (D=64), MSMT17 test layout (3,060
identities, 15 cameras), 11,659 queries x 82,161 gallery. The baseline needs Q x G float32
distances + Q x G int64 argsort + Q x G bool matches (12.5 GB at full size), so both methods run
on a query subset (default 3,000 queries x the full gallery) in the same run, and `evaluate`
alone also runs on the full query set. Each measurement is a fresh subprocess (peak RSS growth,
see _memory.py) with --threads BLAS/OpenMP threads (default 1: stable figures on a shared
machine); rows are JSON lines with median / p20 / p80 over --reps. The baseline row also reports
the largest metric difference of evaluate() fed the baseline's own distance matrix.

    python benchmarks/evaluation.py [--reps 3] [--subset 3000] [--threads 1]
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

from timm_reid.evaluation import evaluate  # noqa: E402

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS, DIM = 11_659, 82_161, 3_060, 15, 64


def planted_data(num_query: int):
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(NUM_IDS, DIM, generator=gen)
    g_pids = torch.randint(0, NUM_IDS, (NUM_GALLERY,), generator=gen)
    q_pids = torch.randint(0, NUM_IDS, (NUM_QUERY,), generator=gen)[:num_query]
    g_cams = torch.randint(0, NUM_CAMS, (NUM_GALLERY,), generator=gen)
    q_cams = torch.randint(0, NUM_CAMS, (NUM_QUERY,), generator=gen)[:num_query]
    gallery = centres[g_pids] + 1.2 * torch.randn(NUM_GALLERY, DIM, generator=gen)
    query = centres[q_pids] + 1.2 * torch.randn(num_query, DIM, generator=gen)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1).numpy()  # noqa: E731
    return unit(query), unit(gallery), q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy()


def full_argsort_evaluation(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """The peer approach: full distance matrix, full argsort, then a loop over queries."""
    distmat = 1.0 - qf @ gf.T
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        raw = matches[i][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.flatnonzero(raw)[-1]
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = raw.cumsum() / (np.arange(len(raw)) + 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    cmc = np.mean(all_cmc, axis=0)
    return {"mAP": float(np.mean(all_ap)), "mINP": float(np.mean(all_inp)), "rank1": float(cmc[0])}


METRICS = ("mAP", "mINP", "rank1")


def worker(method: str, num_query: int):
    qf, gf, qp, gp, qc, gc = planted_data(num_query)
    if method == "full_argsort_numpy":
        fn = lambda: full_argsort_evaluation(qf, gf, qp, gp, qc, gc)  # noqa: E731
    else:
        fn = lambda: evaluate(query_features=torch.from_numpy(qf),  # noqa: E731
                              gallery_features=torch.from_numpy(gf),
                              q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    result, seconds, peak = measure(fn)
    row = {"seconds": seconds, "peak_bytes": peak, **{k: result[k] for k in METRICS}}
    if method == "full_argsort_numpy":
        # Same distances in: evaluate() must give the baseline's numbers.
        same_input = evaluate(1.0 - qf @ gf.T, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
        row["max_abs_diff_same_distances"] = max(abs(same_input[k] - result[k]) for k in METRICS)
    print(json.dumps(row))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--subset", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", nargs=2)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    plans = [("full_argsort_numpy", args.subset), ("timm_reid_evaluate", args.subset),
             ("timm_reid_evaluate", NUM_QUERY)]
    runs = {plan: [] for plan in plans}
    for _ in range(args.reps):
        for method, num_query in plans:
            runs[(method, num_query)].append(run_isolated(__file__, [method, str(num_query)], args.threads))
    for (method, num_query), rows in runs.items():
        emit({"bench": "evaluation", "method": method, "num_query": num_query,
              "num_gallery": NUM_GALLERY, "dim": DIM, **quantiles([r["seconds"] for r in rows]),
              "peak_mb_median": float(np.median([r["peak_bytes"] for r in rows])) / 2**20,
              "metrics": {k: rows[0][k] for k in METRICS}, "reps": len(rows), "worker_threads": args.threads,
              **({"max_abs_diff_same_distances": rows[0]["max_abs_diff_same_distances"]}
                 if "max_abs_diff_same_distances" in rows[0] else {})})


if __name__ == "__main__":
    main()
