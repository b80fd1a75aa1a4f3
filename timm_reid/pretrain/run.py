"""``main(args)``: set up the run directory, build the method's task, train, write the backbone.

A run directory holds ``config.yaml`` (the resolved options; ``config.json`` in folders written
before pretraining shared the run layer, :mod:`timm_reid._run`), ``metrics.jsonl`` (one line per
epoch), ``last.pth`` (resumable state, pickle-free), ``final_metrics.json`` and the result,
``backbone.safetensors`` (:func:`timm_reid.save_backbone`: rebuild with
:func:`timm_reid.load_backbone`, or start ``python -m timm_reid.train --checkpoint-path`` from it).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from timm_reid._run import resumed_options, seed_everything, session, write_config, write_json
from timm_reid._runlock import RunLock
from timm_reid.pretrain.config import RUNTIME_OPTIONS, check_args, check_resume_options, get_args_parser, resolve_args
from timm_reid.pretrain.engine import fit, load_state, prepare_run_dir

__all__ = ["main", "pretrain", "build_backbone"]


def pretrain(method: str, *, output: str, pair_hook=None, **options) -> dict:
    """Python entry point: ``pretrain("isr", output="runs/isr", epochs=2, num_videos=4)``.

    ``options`` are the command-line options with ``_`` for ``-`` (see ``python -m
    timm_reid.pretrain --help``); returns the final metrics (also ``RUN/final_metrics.json``).
    ``pair_hook(epoch, pairs, reliabilities)`` (ISR only) receives every epoch's matched pairs
    as crop indices, e.g. to measure their precision against known tracks.
    """
    args = get_args_parser().parse_args(["--method", method, "--output", os.fspath(output)])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise ValueError(f"unknown pretraining option(s) {unknown}; valid: {', '.join(sorted(vars(args)))}")
    check_resume_options(options.get("resume"), options)
    for key, value in options.items():
        setattr(args, key, value)
    return main(args, pair_hook=pair_hook)


def build_backbone(args: argparse.Namespace, num_cameras: int | None):
    """A pooled-feature (``num_classes=0``) backbone, patched as the options say."""
    from timm_reid.factory import create_model
    from timm_reid.options import PatchOptions

    return create_model(args.model, PatchOptions.from_flags(args, num_cameras), num_classes=0)


def preflight(args: argparse.Namespace) -> None:
    """What a fresh run can check before its folder gets a file: the output folder, and the
    backbone built with its patch options and run once at the input size (``ValueError``)."""
    from timm_reid._cli import check_backbone, check_output_folder, checked
    from timm_reid.options import PatchOptions

    checked(lambda: check_output_folder(args.output, flag="--output"), "--output")
    checked(lambda: check_backbone(args.model, PatchOptions.from_flags(args, 2), args.height, args.width),
            f"--model {args.model} at {args.height}x{args.width}")


def _resume(args):
    if args.resume is None:
        if args.method is None:
            raise ValueError("--method is required (supervised, isr or moco) unless --resume RUN is given")
        return resolve_args(args), None
    prepare_run_dir(args.resume, resuming=True)
    state = load_state(args.resume)
    defaults = vars(get_args_parser().parse_args(["--method", "isr"]))  # options added since the checkpoint
    return resumed_options(state["args"], args, defaults=defaults, runtime=RUNTIME_OPTIONS), state


def main(args: argparse.Namespace, *, pair_hook=None) -> dict:
    """Run (or resume) one pretraining (under torchrun: one process of it); returns the final metrics."""
    args, state = _resume(args)
    check_args(args)
    if state is None:
        preflight(args)
    with session(args) as dist:
        return _run(args, state, dist, pair_hook)


def _run(args, state, dist, pair_hook):
    lock = RunLock(args.output)  # acquired by rank 0 only, the one writer
    try:
        run_dir = dist.on_main(prepare_run_dir, args.output, resuming=state is not None, lock=lock)
        return _train(args, state, dist, pair_hook, run_dir)
    finally:
        lock.release()


def _train(args, state, dist, pair_hook, run_dir):
    from timm_reid.backbone import BACKBONE_FILE, save_backbone

    args_dict = {k: v for k, v in vars(args).items() if k != "resume"}
    if state is None and dist.is_main:
        write_config(args_dict, os.path.join(run_dir, "config.yaml"))
    args.no_progress = args.no_progress or not dist.is_main  # one progress display per run
    torch.set_num_threads(args.threads or max((os.cpu_count() or 1) // dist.world_size, 1))
    start = time.perf_counter()
    seed_everything(args.seed)  # the initial weights; each epoch reseeds itself
    # rank 0 first: it generates the synthetic data the others then read
    built = _BUILDERS[args.method](args, run_dir, pair_hook) if dist.is_main else None
    dist.barrier()
    task, finish = built or _BUILDERS[args.method](args, run_dir, pair_hook)
    task.modules = dist.attach(task.modules, args.device)
    dist.broadcast_module(task.modules)
    task.dist = dist
    history = fit(task, run_dir=run_dir, args_dict=args_dict, epochs=args.epochs, lr=args.lr,
                  weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, seed=args.seed,
                  state=state, progress=not args.no_progress)
    backbone = task.modules["backbone"].eval()
    final = dist.on_main(finish, backbone)
    if not dist.is_main:
        dist.barrier()
        return {"method": args.method, "epochs": len(history), "final": final}
    extra = {"method": args.method, "epochs": args.epochs, "seed": args.seed, "trained_with": args_dict,
             "final": final}
    path = save_backbone(backbone, os.path.join(run_dir, BACKBONE_FILE), model_name=args.model,
                         input_size=(args.height, args.width), extra=extra)
    result = {"method": args.method, "backbone": path, "epochs": len(history),
              "last_epoch": history[-1] if history else {}, "final": final,
              "wall_time_s": round(time.perf_counter() - start, 1)}
    write_json(result, os.path.join(run_dir, "final_metrics.json"))
    dist.barrier()
    return result


def _build_supervised(args, run_dir, pair_hook=None):
    from timm_reid.data import build_transforms
    from timm_reid.pretrain.supervised import SupervisedTask, load_source
    from timm_reid.pretrain.zero_shot import zero_shot

    dataset = load_source(dataset=args.dataset, root=args.root, run_dir=run_dir, seed=args.source_seed,
                          num_cameras=args.source_cameras, num_identities=args.source_identities,
                          num_test_identities=args.source_test_identities, height=args.height, width=args.width)
    if not args.no_progress:
        print(dataset.summary())
    transform = build_transforms(args.height, args.width, train=True, pad=args.pad,
                                 random_erasing_p=args.random_erasing)
    backbone = build_backbone(args, dataset.num_cameras)
    task = SupervisedTask(backbone, dataset.train, transform=transform, batch_size=args.batch_size,
                          num_instances=args.num_instances, margin=args.margin, seed=args.seed,
                          workers=args.workers, device=args.device)

    def finish(model):
        if not (dataset.query and dataset.gallery):
            return {}
        return {"source_test": zero_shot(model, dataset, height=args.height, width=args.width,
                                         workers=args.workers)}

    return task, finish


def load_video_data(args, run_dir):
    """``--data DIR`` (the video-crop layout), or synthetic street video generated once into
    ``RUN/video-data``."""
    from timm_reid.data.video import load_or_generate_video, load_video_crops

    if args.data is not None:
        return load_video_crops(args.data)
    return load_or_generate_video(os.path.join(run_dir, "video-data"), seed=args.video_seed,
                                  num_videos=args.num_videos, num_frames=args.num_frames,
                                  image_size=(args.height, args.width))


def _build_video(args, run_dir, pair_hook=None):
    from timm_reid.pretrain.video_tasks import ISRTask, MoCoTask, video_transform

    crops = load_video_data(args, run_dir)
    if not args.no_progress:
        print(crops.summary())
    backbone = build_backbone(args, len(crops.videos))  # TNorm, if asked: one camera per video
    data = dict(frames_per_video=args.frames_per_video, delta_max=args.delta_max, batch_size=args.batch_size,
                visits=args.visits_per_epoch, seed=args.seed, workers=args.workers, device=args.device)
    if args.method == "isr":
        task = ISRTask(backbone, crops, gamma=args.gamma, tau=args.tau, queue_weight=args.queue_weight,
                       queue_size=args.queue_size, hard_negatives=args.hard_negatives, pair_hook=pair_hook,
                       transform=video_transform(args.height, args.width, color_jitter=args.color_jitter), **data)
    else:
        task = MoCoTask(backbone, crops, tau=args.tau, queue_size=args.queue_size, momentum=args.momentum,
                        transform=video_transform(args.height, args.width, color_jitter=args.color_jitter,
                                                  pad=args.pad), **data)

    def finish(model):
        return {"videos": len(crops.videos), "crops": len(crops.crops)}

    return task, finish


_BUILDERS = {"supervised": _build_supervised, "isr": _build_video, "moco": _build_video}
