"""Pretraining measures: pair precision, zero-shot retrieval, cost against data size.

    python benchmarks/pretrain.py --work /tmp/pretrain-bench --seeds 0 --threads 1 > rows.jsonl

One JSON line per measurement (with device and versions):

- ``zero_shot``: mAP / rank-1 on the test split of the demo's synthetic ReID data (seed 0, the
  default world of ``python -m timm_reid.train --preset demo``) of a backbone with no fine-tuning:
  ``random`` (initial weights), ``moco``, ``isr-gamma0`` and ``isr`` (gamma 6), each pretrained on
  the same synthetic street video (``timm_reid.data.video``, its own seed, cameras and people).
- ``pairs`` (ISR rows): per epoch, the precision of the matched positive pairs against the hidden
  tracks (read here, never by training) and the same precision weighted by ``p^6`` (what the
  default loss weights its pairs with), for gamma 0 and gamma 6.
- ``cost``: seconds per epoch of ISR at two data sizes (``--num-videos`` and half of it).

Every pretraining runs through ``timm_reid.pretrain.pretrain`` (the CLI's code path); run
directories go to ``--work``; an existing finished run there is reused (``--reuse``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import emit  # noqa: E402

ROWS = ("random", "moco", "isr-gamma0", "isr")
_GAMMA = {"isr-gamma0": 0.0, "isr": 6.0}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the data and the run directories")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-videos", type=int, default=48)
    p.add_argument("--num-frames", type=int, default=40)
    p.add_argument("--visits-per-epoch", type=int, default=4)
    p.add_argument("--video-seed", type=int, default=202)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-cost", action="store_true", help="skip the half-size timing run")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs found in --work")
    return p


def _video_data(args, num_videos):
    from timm_reid.data.video import load_or_generate_video, read_tracks

    root = os.path.join(args.work, f"video-{args.video_seed}-{num_videos}x{args.num_frames}")
    crops = load_or_generate_video(root, seed=args.video_seed, num_videos=num_videos,
                                   num_frames=args.num_frames, image_size=(64, 32))
    return root, crops, read_tracks(root, crops)


def _pair_recorder(tracks, row, seed):
    def hook(epoch, pairs, reliabilities):
        correct = [float(tracks[i] == tracks[j]) for i, j in pairs]
        weights = [p ** 6 for p in reliabilities]
        emit({"measure": "pairs", "row": row, "seed": seed, "epoch": epoch + 1, "pairs": len(pairs),
              "precision": sum(correct) / max(len(correct), 1),
              "weighted_precision_p6": sum(c * w for c, w in zip(correct, weights)) / max(sum(weights), 1e-30),
              "mean_reliability": sum(reliabilities) / max(len(reliabilities), 1)})
    return hook


def _pretrained(args, row, seed, data_root, tracks, num_videos):
    from timm_reid.pretrain import pretrain

    out = os.path.join(args.work, f"{row}-seed{seed}-{num_videos}v-{args.epochs}e")
    if not (args.reuse and os.path.isfile(os.path.join(out, "final_metrics.json"))):
        method = "moco" if row == "moco" else "isr"
        options = {"gamma": _GAMMA[row]} if method == "isr" else {}
        pretrain(method, output=out, data=data_root, seed=seed, model=args.model, epochs=args.epochs,
                 visits_per_epoch=args.visits_per_epoch, threads=args.threads, no_progress=True,
                 pair_hook=_pair_recorder(tracks, row, seed) if method == "isr" else None, **options)
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        history = [json.loads(line) for line in f]
    return out, history


def _zero_shot(args, backbone, target):
    from timm_reid.pretrain import zero_shot

    return zero_shot(backbone, target, height=64, width=32)


def main(args):
    import timm_reid
    from timm_reid.data import build_dataset
    from timm_reid.pretrain.engine import seed_all

    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    target = build_dataset("synthetic", os.path.join(args.work, "demo-data-seed0"), seed=0, image_size=(64, 32))
    data_root, crops, tracks = _video_data(args, args.num_videos)
    common = {"model": args.model, "epochs": args.epochs, "videos": args.num_videos, "frames": args.num_frames,
              "crops": len(crops.crops), "tracks": len(set(tracks))}
    for seed in args.seeds:
        for row in args.rows:
            start = time.perf_counter()
            if row == "random":
                seed_all(seed)
                backbone, history = timm_reid.create_model(args.model, num_classes=0), []
            else:
                out, history = _pretrained(args, row, seed, data_root, tracks, args.num_videos)
                backbone = timm_reid.load_backbone(out)
            metrics = _zero_shot(args, backbone, target)
            emit({"measure": "zero_shot", "row": row, "seed": seed, **common, "mAP": metrics["mAP"],
                  "rank1": metrics["rank1"], "pretrain_s": round(sum(r["seconds"] for r in history), 1),
                  "seconds_per_epoch": [r["seconds"] for r in history],
                  "row_wall_s": round(time.perf_counter() - start, 1)})
    if not args.no_cost:
        half = max(args.num_videos // 2, 1)
        small_root, small, small_tracks = _video_data(args, half)
        out = os.path.join(args.work, f"cost-{half}v")
        if not os.path.isfile(os.path.join(out, "final_metrics.json")):
            from timm_reid.pretrain import pretrain
            pretrain("isr", output=out, data=small_root, model=args.model, epochs=2,
                     visits_per_epoch=args.visits_per_epoch, threads=args.threads, no_progress=True)
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            seconds = [json.loads(line)["seconds"] for line in f]
        emit({"measure": "cost", "row": "isr", "videos": half, "crops": len(small.crops),
              "seconds_per_epoch": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
