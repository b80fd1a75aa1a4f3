"""Pretraining method ``moco``: MoCo instance discrimination on unlabeled video crops, the ISR
paper's baseline row (:class:`~timm_reid.pretrain.video_tasks.MoCoTask`).

A method of the pretraining protocol (:mod:`timm_reid.pretrain.protocol`).
"""
from __future__ import annotations

import math

from timm_reid.pretrain.video_tasks import VIDEO_DATA, add_video_arguments, video_problems

NAME = "moco"
DEFAULTS = {"epochs": 20, "lr": 1e-3, "batch_size": 80}
DATA = VIDEO_DATA


def add_arguments(parser) -> None:
    add_video_arguments(parser)
    g = parser.add_argument_group("method moco")
    g.add_argument("--momentum", default=0.99, type=float, help="key-encoder EMA momentum")
    g.add_argument("--pad", default=4, type=int, help="augmentation: zero padding before the random crop")


def check(args) -> list:
    problems = video_problems(args)
    if not math.isfinite(args.momentum) or not 0 <= args.momentum < 1:
        problems.append(f"--momentum {args.momentum} must be in [0, 1)")
    if args.pad < 0:
        problems.append("--pad must be >= 0")
    return problems


def build_task(args, run_dir, pair_hook=None):
    from timm_reid.pretrain.engine import build_backbone
    from timm_reid.pretrain.video_tasks import MoCoTask, load_video_data, video_task_options, video_transform

    crops = load_video_data(args, run_dir)
    if not args.no_progress:
        print(crops.summary())
    backbone = build_backbone(args, len(crops.videos))  # TNorm, if asked: one camera per video
    return MoCoTask(backbone, crops, tau=args.tau, queue_size=args.queue_size, momentum=args.momentum,
                    transform=video_transform(args.height, args.width, color_jitter=args.color_jitter,
                                              pad=args.pad), **video_task_options(args))
