"""Candidate label-free estimators scored on the suite's first clustering (no training).

On the clustering features of each configuration's initial model (``suite_features.py``), each
candidate's first clustering is compared with the planted identities: ICE eps candidates by
cluster count against the true identity count, outlier share, largest cluster and ARI; IICS count
candidates by estimated / true count, per camera (summed) and overall. The planted identities are
only used to score; no candidate sees them. Rows go to ``RESULTS/estimators.jsonl`` (rewritten)
and a table to ``RESULTS/estimators.md``.

    python benchmarks/suite_estimators.py
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite import DEFAULT_RESULTS  # noqa: E402

K1_ICE, K2, MIN_SAMPLES = 15, 6, 4  # the ice-demo preset's
K1_IICS, LAMBDA_IICS = 20, 0.3  # the demo preset's (parser defaults)


def ari(truth, labels):
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


def ice_candidates(feats):
    """name -> labels of the first clustering."""
    from timm_reid.cluster import dbscan_auto, dbscan_jaccard

    out = {"fixed eps 0.5 (old ice-demo)": dbscan_jaccard(feats, eps=0.5, min_samples=MIN_SAMPLES, k1=K1_ICE, k2=K2),
           "fixed eps 0.55 (ICE paper)": dbscan_jaccard(feats, eps=0.55, min_samples=MIN_SAMPLES, k1=K1_ICE, k2=K2)}
    for rule in ("most-clusters", "fewest-outliers-near-most"):
        out[f"auto: {rule}"] = dbscan_auto(feats, min_samples=MIN_SAMPLES, k1=K1_ICE, k2=K2, min_clusters=8,
                                           rule=rule)[0]
    return out


def nn_quantile_count(feats, q):
    """Rejected candidate: average linkage cut at the q-quantile of nearest-neighbour distances."""
    from timm_reid.cluster import agglomerative, rerank

    n = len(feats)
    d = rerank(features=torch.as_tensor(feats), k1=min(K1_IICS, n - 1), k2=min(K2, n), lambda_value=LAMBDA_IICS)
    d = torch.maximum(d, d.t())
    d.fill_diagonal_(0.0)
    nn = (d + torch.eye(n) * 9).min(1).values
    return int(agglomerative(d, threshold=float(torch.quantile(nn.double(), q)) + 1e-12).max()) + 1


def gap_alone_count(feats):
    """Rejected candidate: the largest merge-height gap alone (no test that it is a real gap)."""
    from scipy.cluster.hierarchy import linkage

    from timm_reid.cluster import rerank
    from timm_reid.cluster.agglomerative import condensed_upper_triangle
    from timm_reid.cluster.auto import MAX_SIZE, MIN_SIZE, largest_gap_count

    n = len(feats)
    d = rerank(features=torch.as_tensor(feats), k1=min(K1_IICS, n - 1), k2=min(K2, n), lambda_value=LAMBDA_IICS)
    d = torch.maximum(d, d.t())
    d.fill_diagonal_(0.0)
    heights = np.sort(linkage(condensed_upper_triangle(d), "average")[:, 2])
    return largest_gap_count(heights, lo=int(np.ceil(n / MAX_SIZE)), hi=int(n // MIN_SIZE))[0]


def count_candidates():
    """name -> fn(features, stage) with stage "intra" (one camera) or "inter" (all cameras)."""
    from timm_reid.cluster import estimate_num_clusters
    from timm_reid.cluster.auto import INTER_QUANTILE, INTRA_QUANTILE

    quantile = {"intra": INTRA_QUANTILE, "inter": INTER_QUANTILE}
    return {"adopted: gap if separated, else nn quantile 0.9 intra / 0.995 inter":
            lambda f, stage: estimate_num_clusters(f, quantile=quantile[stage], k1=K1_IICS, lambda_value=LAMBDA_IICS),
            "largest merge-height gap alone": lambda f, stage: gap_alone_count(f),
            "nn-distance quantile 0.9 (both stages)": lambda f, stage: nn_quantile_count(f, 0.9),
            "nn-distance quantile 0.995 (both stages)": lambda f, stage: nn_quantile_count(f, 0.995)}


def score(name, path):
    d = np.load(path)
    feats, pids, camids = d["features"], d["pids"], d["camids"]
    true_ids = len(set(pids))
    rows = []
    for cand, labels in ice_candidates(feats).items():
        sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1, int)
        rows.append({"config": name, "kind": "ice eps", "candidate": cand, "clusters": int(labels.max() + 1),
                     "true": true_ids, "outlier_share": float((labels < 0).mean()), "largest": int(sizes.max()),
                     "ari": ari(pids, labels)})
    true_intra = sum(len(set(pids[camids == c])) for c in np.unique(camids))
    for cand, fn in count_candidates().items():
        intra = sum(fn(feats[camids == c], "intra") for c in np.unique(camids))
        rows.append({"config": name, "kind": "iics counts", "candidate": cand, "intra_sum": intra,
                     "intra_true": true_intra, "inter": fn(feats, "inter"), "true": true_ids})
    return rows


def table(rows):
    lines = ["## ICE: first clustering (initial model)", "",
             "| config | candidate | clusters / true ids | outlier share | largest | ARI |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['candidate']} | {r['clusters']} / {r['true']} | {100 * r['outlier_share']:.0f} % | "
              f"{r['largest']} | {r['ari']:.3f} |" for r in rows if r["kind"] == "ice eps"]
    lines += ["", "## IICS: estimated / true cluster count (initial model)", "",
              "| config | candidate | intra (sum over cameras) | ratio | inter | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['candidate']} | {r['intra_sum']} / {r['intra_true']} | "
              f"{r['intra_sum'] / r['intra_true']:.2f} | {r['inter']} / {r['true']} | {r['inter'] / r['true']:.2f} |"
              for r in rows if r["kind"] == "iics counts"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=DEFAULT_RESULTS)
    p.add_argument("--init", default="random")
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = os.path.join(args.results, "features")
    rows = []
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(f"-{args.init}.npz"):
            rows += score(fn[: -len(f"-{args.init}.npz")], os.path.join(folder, fn))
            print(rows[-1]["config"], flush=True)
    suffix = "" if args.init == "random" else f"-{args.init}"
    with open(os.path.join(args.results, f"estimators{suffix}.jsonl"), "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with open(os.path.join(args.results, f"estimators{suffix}.md"), "w") as f:
        f.write(f"# Candidate estimators on the first clustering ({args.init} init; suite_estimators.py)\n\n"
                + table(rows))


if __name__ == "__main__":
    main()
