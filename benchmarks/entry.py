"""What patching does to a pretrained backbone before any training: zero-shot retrieval per entry.

    python benchmarks/entry.py --backbone PRETRAIN/backbone.safetensors --data DIR [--seed 0]

``--data`` is a synthetic target dataset folder (generated there with ``--seed`` if missing, with the
demo's generator settings), or any Market-layout folder. Prints one JSON line per variant: the
unpatched backbone, AIBN by replacement (the papers) with and without re-estimated running
statistics and a least-squares refit of the affine to the replaced norm's output (both on
``--calibration-images`` train images, no labels), and AIBN blended in beside the original norm (``entry="blend"``), each with AIBN in the
given stages; ``max_abs_diff`` is the largest feature difference to the unpatched backbone on the
query images (0 means the pretrained function is kept exactly).
"""
import argparse
import json
import time
import warnings

import torch
from torch.utils.data import DataLoader

import timm_reid
from timm_reid.backbone import read_backbone_metadata
from timm_reid.data import ImageDataset, build_dataset, build_transforms
from timm_reid.evaluation import evaluate, extract_features
from timm_reid.layers.calibrate import calibrate_aibn


def variants(aibn):
    """(name, patch keywords, calibration: None, "stats" or "stats+affine")."""
    yield "unpatched", {}, None
    for gate_init in (0.1, 1.0):
        replace = dict(aibn=aibn, entry="replace", gate_init=gate_init)
        yield f"replace gate {gate_init}", replace, None
        yield f"replace gate {gate_init} + calibrated stats", replace, "stats"
        yield f"replace gate {gate_init} + calibrated stats + fitted affine", replace, "stats+affine"
    yield "blend", dict(aibn=aibn, entry="blend"), None


def zero_shot(model, dataset, transform):
    loader = DataLoader(ImageDataset(list(dataset.query) + list(dataset.gallery), transform), batch_size=128)
    feats, pids, cams = extract_features(model, loader, progress=False)
    nq = len(dataset.query)
    r = evaluate(query_features=feats[:nq], gallery_features=feats[nq:], q_pids=pids[:nq], g_pids=pids[nq:],
                 q_camids=cams[:nq], g_camids=cams[nq:])
    return feats[:nq], {"mAP": round(100 * float(r["mAP"]), 2), "rank1": round(100 * float(r["rank1"]), 2)}


def calibration_batches(dataset, transform, n_images, seed):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset.train), generator=g)[:n_images].tolist()
    records = [dataset.train[i] for i in order]
    for images, _, camids, _ in DataLoader(ImageDataset(records, transform), batch_size=64):
        yield images, camids


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aibn", type=int, nargs="+", default=[3, 4])
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    meta = read_backbone_metadata(args.backbone)
    h, w = meta["input_size"]
    dataset = build_dataset("synthetic", args.data, seed=args.seed, image_size=(h, w))
    test_tf = build_transforms(h, w, train=False)
    reference = None
    build = lambda **patch: timm_reid.create_model(meta["model_name"], **patch, **meta["timm_kwargs"],  # noqa: E731
                                                   checkpoint_path=args.backbone).eval()
    for name, patch, calibrate in variants(args.aibn):
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the replacement's warning is what this measures
            model = build(**patch)
        if calibrate:
            batches = calibration_batches(dataset, test_tf, args.calibration_images, args.seed)
            calibrate_aibn(model, batches, reference=build() if calibrate == "stats+affine" else None)
        feats, metrics = zero_shot(model, dataset, test_tf)
        reference = feats if reference is None else reference
        print(json.dumps({"variant": name, "model": meta["model_name"], "aibn": args.aibn if patch else [],
                          **metrics, "max_abs_diff": float((feats - reference).abs().max()),
                          "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
