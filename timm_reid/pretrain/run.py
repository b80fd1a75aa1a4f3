"""``main(args)``: set up the run directory, build the method's task (its module's ``build_task``,
:mod:`timm_reid.pretrain.protocol`), train, write the backbone.

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

from timm_reid._run import ConfigError, resumed_options, seed_everything, session, write_config, write_json
from timm_reid._runlock import RunLock
from timm_reid.pretrain.config import (RUNTIME_OPTIONS, check_args, check_resume_options, get_args_parser,
                                       refuse_foreign_options, resolve_args)
from timm_reid.pretrain.engine import build_backbone, fit, load_state, prepare_run_dir
from timm_reid.pretrain.methods import get_method, method_names

__all__ = ["main", "pretrain", "build_backbone"]


def pretrain(method: str, *, output: str, pair_hook=None, **options) -> dict:
    """Python entry point: ``pretrain("isr", output="runs/isr", epochs=2, num_videos=4)``.

    ``options`` are the command-line options with ``_`` for ``-`` (see ``python -m
    timm_reid.pretrain --help``); returns the final metrics (also ``RUN/final_metrics.json``).
    ``pair_hook(epoch, pairs, reliabilities)`` (ISR only) receives every epoch's matched pairs
    as crop indices, e.g. to measure their precision against known tracks.
    """
    get_method(method)  # an unknown method is a ConfigError naming the valid ones
    args = get_args_parser(add_help=False, method=method).parse_args(["--method", method,
                                                                      "--output", os.fspath(output)])
    refuse_foreign_options(method, options)
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise ConfigError(f"unknown pretraining option(s) {unknown}; valid: {', '.join(sorted(vars(args)))}")
    check_resume_options(options.get("resume"), options)
    for key, value in options.items():
        setattr(args, key, value)
    return main(args, pair_hook=pair_hook)


def preflight(args: argparse.Namespace) -> None:
    """What a fresh run can check before its folder gets a file: the output folder, and the
    backbone built with its patch options and run once at the input size (:class:`ConfigError`)."""
    from timm_reid._cli import check_backbone, check_output_folder, checked
    from timm_reid.options import PatchOptions

    checked(lambda: check_output_folder(args.output, flag="--output"), "--output", error=ConfigError)
    checked(lambda: check_backbone(args.model, PatchOptions.from_flags(args, 2), args.height, args.width),
            f"--model {args.model} at {args.height}x{args.width}", error=ConfigError)


def _resume(args):
    if args.resume is None:
        if args.method is None:
            raise ConfigError(f"--method is required ({', '.join(method_names())}) unless --resume RUN is given")
        return resolve_args(args), None
    prepare_run_dir(args.resume, resuming=True)
    state = load_state(args.resume)
    # options added to the stored run's method since its checkpoint take their defaults
    method = state["args"].get("method")
    defaults = vars(get_args_parser(add_help=False, method=method if method in method_names() else None).parse_args([]))
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
    method = get_method(args.method)
    task = method.build_task(args, run_dir, pair_hook) if dist.is_main else None
    dist.barrier()
    task = task or method.build_task(args, run_dir, pair_hook)
    task.modules = dist.attach(task.modules, args.device)
    dist.broadcast_module(task.modules)
    task.dist = dist
    history = fit(task, run_dir=run_dir, args_dict=args_dict, epochs=args.epochs, lr=args.lr,
                  weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, seed=args.seed,
                  state=state, progress=not args.no_progress)
    backbone = task.modules["backbone"].eval()
    final = dist.on_main(task.final_metrics, backbone)
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
