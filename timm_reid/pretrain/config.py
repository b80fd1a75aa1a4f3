"""Command-line options of ``python -m timm_reid.pretrain``: parser, method defaults and checks.

Options whose default depends on the method are ``None`` in the parser and resolved by
:func:`resolve_args` (see ``METHOD_DEFAULTS``); the resolved options are stored in the run's
``config.json`` and in every checkpoint, so ``--resume`` continues with exactly them.
"""
from __future__ import annotations

import argparse
import math

from timm_reid._cli import default_device, runtime_problems
from timm_reid._run import ConfigError, refuse_flags_ignored_by_resume
from timm_reid.options import PatchOptions
from timm_reid.surgery import ENTRIES

__all__ = ["METHODS", "METHOD_DEFAULTS", "RUNTIME_OPTIONS", "get_args_parser", "resolve_args", "check_args",
           "explicit_options", "check_resume_options"]

METHODS = ("supervised", "isr", "moco")
# Options that may differ between the interrupted and the resuming command (how to run, not what).
RUNTIME_OPTIONS = ("threads", "workers", "no_progress", "device", "dist_timeout")

# Sizes for 2 CPU cores: see docs/training.md "Pretrain without downloads" for what each takes on one thread.
METHOD_DEFAULTS = {
    "supervised": {"epochs": 80, "lr": 1e-3, "batch_size": 64},
    "isr": {"epochs": 20, "lr": 1e-3, "batch_size": 80},
    "moco": {"epochs": 20, "lr": 1e-3, "batch_size": 80},
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m timm_reid.pretrain", add_help=add_help, allow_abbrev=False,
        description="Pretrain a timm backbone without downloads: supervised on a labeled source "
                    "dataset, or self-supervised (ISR, MoCo) on unlabeled video crops. The result "
                    "is RUN/backbone.safetensors (timm_reid.load_backbone, train --checkpoint-path).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("run")
    g.add_argument("--method", default=None, choices=METHODS, help="required unless --resume")
    g.add_argument("--seed", default=0, type=int, help="seed of training (sampling, augmentation, init)")
    g.add_argument("--output", default=None, metavar="RUN",
                   help="run directory, must be new or empty (None: runs/pretrain-<method>-seed<seed>)")
    g.add_argument("--resume", default=None, metavar="RUN", help="continue the run in RUN from its last.pth")
    g.add_argument("--threads", default=None, type=int,
                   help="torch CPU threads per process (None: all cores, shared by the torchrun processes)")
    g.add_argument("--device", default=default_device(),
                   help="torch device (default: cuda when available; under torchrun, cuda means cuda:LOCAL_RANK)")
    g.add_argument("--dist-timeout", default=1800.0, type=float, metavar="SECONDS",
                   help="torchrun: the longest any process waits for the others before the run ends with an error")
    g.add_argument("--workers", default=0, type=int, help="data-loader worker processes")
    g.add_argument("--no-progress", action="store_true", help="disable progress bars")

    g = parser.add_argument_group("model (any timm model create_model builds, patched or not)")
    g.add_argument("--model", default="convnext_atto", help="timm model name")
    g.add_argument("--height", default=64, type=int, help="input height")
    g.add_argument("--width", default=32, type=int, help="input width")
    g.add_argument("--aibn", default=[], type=int, nargs="*", help="stages (from 1) whose norms become AIBN")
    g.add_argument("--tnorm", default=[], type=int, nargs="*", help="stages (from 1) followed by a TNorm")
    g.add_argument("--aibn-mix", default="var", choices=("var", "std"), help="AIBN mixing of the statistics")
    g.add_argument("--aibn-gate-init", default=0.1, type=float,
                   help="initial AIBN gate (0: instance norm only, ISR's IN-after-early-stages choice)")
    g.add_argument("--aibn-entry", default="blend", choices=ENTRIES,
                   help="how AIBN enters (see timm_reid.patch): blend in from 0 beside the norm, or replace it")
    g.add_argument("--tnorm-mode", default="transform", choices=("transform", "normalize"))
    g.add_argument("--last-stride", default=None, type=int, help="stride of the last stage; None keeps it")

    g = parser.add_argument_group("schedule (AdamW, linear warm-up, cosine decay per step)")
    g.add_argument("--epochs", default=None, type=int, help="epochs (None: 80 supervised, 20 isr/moco)")
    g.add_argument("--lr", default=None, type=float, help="peak learning rate (None: 1e-3)")
    g.add_argument("--weight-decay", default=5e-4, type=float)
    g.add_argument("--warmup-epochs", default=1.0, type=float, help="linear warm-up length in epochs")
    g.add_argument("--batch-size", default=None, type=int,
                   help="supervised: P x K batch (None: 64); isr/moco: images of a super frame (None: 80)")

    g = parser.add_argument_group("supervised source data (--method supervised)")
    g.add_argument("--dataset", default=None,
                   help="layout name (market1501, dukemtmc, msmt17, csv, synthetic); None: a synthetic source world")
    g.add_argument("--root", default=None, metavar="DIR",
                   help="dataset folder (None with no --dataset: RUN/source-data)")
    g.add_argument("--source-seed", default=101, type=int, help="synthetic source world: generator seed")
    g.add_argument("--source-cameras", default=6, type=int, help="synthetic source world: cameras")
    g.add_argument("--source-identities", default=300, type=int, help="synthetic source world: train identities")
    g.add_argument("--source-test-identities", default=40, type=int, help="synthetic source world: test identities")
    g.add_argument("--num-instances", default=4, type=int, help="K of the P x K batches")
    g.add_argument("--margin", default=0.3, type=float, help="batch-hard triplet margin")
    g.add_argument("--pad", default=4, type=int, help="augmentation: zero padding before the random crop")
    g.add_argument("--random-erasing", default=0.5, type=float, help="augmentation: random erasing probability")

    g = parser.add_argument_group("unlabeled video crops (--method isr / moco)")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="video-crop folder (videos/<video>/<frame>_<det>.jpg); None: synthetic street video in RUN/video-data")
    g.add_argument("--video-seed", default=202, type=int, help="synthetic street video: generator seed")
    g.add_argument("--num-videos", default=48, type=int, help="synthetic street video: videos")
    g.add_argument("--num-frames", default=40, type=int, help="synthetic street video: frames per video")
    g.add_argument("--delta-max", default=4, type=int, help="ISR: largest frame interval of a pair")
    g.add_argument("--frames-per-video", default=3, type=int,
                   help="ISR: frames drawn per video visit, paired with each other")
    g.add_argument("--visits-per-epoch", default=4, type=int, help="isr/moco: times each video is visited per epoch")
    g.add_argument("--gamma", default=6.0, type=float, help="ISR: reliability exponent (0: no reliability weighting)")
    g.add_argument("--tau", default=0.1, type=float, help="ISR/MoCo: softmax temperature")
    g.add_argument("--queue-weight", default=5.0, type=float, help="ISR: lambda, weight of the memory-queue loss")
    g.add_argument("--queue-size", default=1024, type=int, help="isr/moco: memory queue length (features)")
    g.add_argument("--hard-negatives", default=50, type=int,
                   help="ISR: k hardest (most similar) other-video queue features per crop")
    g.add_argument("--color-jitter", default=0.2, type=float,
                   help="isr/moco augmentation: brightness, contrast and saturation jitter (with flip; "
                        "moco also pads by --pad and crops)")
    g.add_argument("--momentum", default=0.99, type=float, help="MoCo: key-encoder EMA momentum")
    return parser


def explicit_options(argv) -> set:
    """The options given in ``argv`` itself (not by defaults)."""
    parser = get_args_parser(add_help=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def check_resume_options(resume, given) -> None:
    """With ``--resume`` only the runtime options may be given: the others would be ignored
    (:class:`~timm_reid._run.ConfigError`; ``output`` is where the run already is)."""
    refuse_flags_ignored_by_resume(resume, set(given) - {"output"}, RUNTIME_OPTIONS)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the method-dependent defaults (in place) and return ``args``."""
    for key, value in METHOD_DEFAULTS[args.method].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        args.output = f"runs/pretrain-{args.method}-seed{args.seed}"
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`~timm_reid._run.ConfigError` (a ``ValueError``) naming every bad option and the fix."""
    problems = []
    problems += runtime_problems(args)
    try:
        PatchOptions.from_flags(args, 1)
    except (TypeError, ValueError) as e:
        problems.append(f"model options: {e}")
    positive = ["epochs", "height", "width", "batch_size", "num_instances", "num_videos", "num_frames",
                "delta_max", "visits_per_epoch", "queue_size", "hard_negatives"]
    problems += [f"--{k.replace('_', '-')} {getattr(args, k)} must be >= 1"
                 for k in positive if getattr(args, k) < 1]
    if args.lr <= 0 or args.weight_decay < 0 or args.warmup_epochs < 0:
        problems.append("--lr must be > 0, --weight-decay and --warmup-epochs >= 0")
    if args.method == "supervised" and args.batch_size % args.num_instances:
        problems.append(f"--batch-size {args.batch_size} must be a multiple of --num-instances "
                        f"{args.num_instances} (batch = P identities x K images)")
    if args.method == "isr" and args.batch_size < 2:
        problems.append(f"--batch-size {args.batch_size}: ISR matches crops within a super frame of --batch-size "
                        "images, and one image has nothing to match (the loss would be 0); use >= 2")
    if args.frames_per_video < 2:
        problems.append(f"--frames-per-video {args.frames_per_video} must be >= 2 (frames are paired)")
    if args.color_jitter < 0 or args.pad < 0:
        problems.append("--color-jitter and --pad must be >= 0")
    finite = {k: getattr(args, k) for k in ("gamma", "tau", "queue_weight", "margin", "lr", "weight_decay",
                                            "warmup_epochs", "color_jitter", "random_erasing", "momentum")}
    problems += [f"--{k.replace('_', '-')} {v} must be a finite number"
                 for k, v in finite.items() if not math.isfinite(v)]
    if args.gamma < 0 or args.tau <= 0 or args.queue_weight < 0 or args.margin < 0:
        problems.append("--gamma, --queue-weight and --margin must be >= 0, --tau > 0")
    if not 0 <= args.random_erasing <= 1:
        problems.append(f"--random-erasing {args.random_erasing} must be a probability in [0, 1]")
    if not 0 <= args.momentum < 1:
        problems.append(f"--momentum {args.momentum} must be in [0, 1)")
    if args.method != "supervised" and (args.dataset is not None or args.root is not None):
        problems.append(f"--dataset/--root are the labeled source of --method supervised; "
                        f"--method {args.method} reads unlabeled video crops with --data DIR")
    if args.method == "supervised" and args.data is not None:
        problems.append("--data is the video-crop folder of isr/moco; --method supervised reads "
                        "--dataset NAME --root DIR")
    if problems:
        raise ConfigError("invalid options: " + "; ".join(problems))
