"""Pretraining method ``isr``: ISR on unlabeled video crops (:class:`~timm_reid.pretrain.video_tasks.ISRTask`).

A method of the pretraining protocol (:mod:`timm_reid.pretrain.protocol`).
"""
from __future__ import annotations

import math

from timm_reid.pretrain.video_tasks import VIDEO_DATA, add_video_arguments, video_problems

NAME = "isr"
# Sizes for 2 CPU cores: see docs/training.md "Pretrain without downloads" for what each takes on one thread.
DEFAULTS = {"epochs": 20, "lr": 1e-3, "batch_size": 80}
DATA = VIDEO_DATA


def add_arguments(parser) -> None:
    add_video_arguments(parser)
    g = parser.add_argument_group("method isr")
    g.add_argument("--gamma", default=6.0, type=float, help="reliability exponent (0: no reliability weighting)")
    g.add_argument("--queue-weight", default=5.0, type=float, help="lambda, weight of the memory-queue loss")
    g.add_argument("--hard-negatives", default=50, type=int,
                   help="k hardest (most similar) other-video queue features per crop")


def check(args) -> list:
    problems = video_problems(args)
    if args.hard_negatives < 1:
        problems.append(f"--hard-negatives {args.hard_negatives} must be >= 1")
    if args.batch_size < 2:
        problems.append(f"--batch-size {args.batch_size}: ISR matches crops within a super frame of --batch-size "
                        "images, and one image has nothing to match (the loss would be 0); use >= 2")
    problems += [f"--{k.replace('_', '-')} {getattr(args, k)} must be a finite number"
                 for k in ("gamma", "queue_weight") if not math.isfinite(getattr(args, k))]
    if args.gamma < 0 or args.queue_weight < 0:
        problems.append("--gamma and --queue-weight must be >= 0")
    return problems


def build_task(args, run_dir, pair_hook=None):
    from timm_reid.pretrain.engine import build_backbone
    from timm_reid.pretrain.video_tasks import ISRTask, load_video_data, video_task_options, video_transform

    crops = load_video_data(args, run_dir)
    if not args.no_progress:
        print(crops.summary())
    backbone = build_backbone(args, len(crops.videos))  # TNorm, if asked: one camera per video
    return ISRTask(backbone, crops, gamma=args.gamma, tau=args.tau, queue_weight=args.queue_weight,
                   queue_size=args.queue_size, hard_negatives=args.hard_negatives, pair_hook=pair_hook,
                   transform=video_transform(args.height, args.width, color_jitter=args.color_jitter),
                   **video_task_options(args))
