"""Clustering features of the initial model for every suite configuration (no training).

For the cheap first pass of choosing a label-free estimator: the exact features a demo run clusters
first (its preset, its seed, its initial weights; flip-averaged, L2-normalised, per-camera centred),
with the planted identities and cameras, saved as ``RESULTS/features/<config>-<init>.npz``. Existing
files are kept (resumable). ``benchmarks/suite_estimators.py`` scores the candidates on them.

    python benchmarks/suite_features.py --inits random
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite import CONFIGS, DEFAULT_RESULTS, ensure_data, image_size  # noqa: E402


def features_path(results, name, init):
    return os.path.join(results, "features", f"{name}-{init}.npz")


def extract_initial(results, name, init):
    from timm_reid.distributed import LOCAL
    from timm_reid.train.config import parse_args
    from timm_reid.train.pipeline import build_context
    from timm_reid.train.starting_points import resolve_init
    from timm_reid.train.checkpoint import seed_everything

    h, w = image_size(name)
    argv = ["--method", "ice", "--preset", "ice-demo", "--dataset", "market1501", "--root",
            ensure_data(results, name), "--seed", str(CONFIGS[name]["seed"]), "--height", str(h), "--width", str(w),
            "--threads", "1", "--no-progress", "--device", "cpu"]
    if init != "random":
        argv += ["--init", init, "--init-cache", os.path.join(results, "pretrained")]
    args = parse_args(argv)
    if args.init:
        args.checkpoint_path = resolve_init(args, LOCAL)
    seed_everything(args.seed)  # as the run: its initial weights come from this seed
    ctx = build_context(args, None, fresh=True)
    raw, feats, pids, camids = ctx.clustering_features(ctx.make_net())
    return feats.astype(np.float32), pids, camids


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=DEFAULT_RESULTS)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--inits", nargs="+", default=["random"], choices=("random", "isr"))
    args = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(os.path.join(args.results, "features"), exist_ok=True)
    for init in args.inits:
        for name in args.configs:
            path = features_path(args.results, name, init)
            if os.path.isfile(path):
                continue
            feats, pids, camids = extract_initial(args.results, name, init)
            tmp = path + ".tmp.npz"
            np.savez(tmp, features=feats, pids=pids, camids=camids)
            os.replace(tmp, path)
            print(f"{name} {init}: {feats.shape}", flush=True)


if __name__ == "__main__":
    main()
