"""The training harness shared by every method: run directory, logging, data, transforms, model
building, the checkpointed loop over a method's steps, evaluation, outputs and the command line.

Read top to bottom: :func:`main` sets up the run directory, data and model, evaluates the
untrained model, lets the method (:mod:`timm_reid.train.methods`) run its steps (checkpointing
after every step), evaluates the final model, writes ``final_metrics.json``, the portable
``backbone.safetensors`` and the plots, and prints a summary table.

The final model is the one reported; test-set metrics are computed for the curves only and never
select a checkpoint.
"""

import argparse
import logging
import math
import os
import sys
import time
import warnings

import torch

from timm_reid import distributed
from timm_reid._cli import check_backbone, check_output_folder, checked
from timm_reid._run import CHECKPOINT_FILE, USER_ERRORS, RunFolder, resumed_options, session
from timm_reid._runlock import RunLock
from timm_reid.evaluation.splits import PROTOCOLS, evaluate_split, format_metrics
from timm_reid._records import check_stored_options, options_entry
from timm_reid.train.checkpoint import atomic_save, load_checkpoint, seed_everything, write_json, write_jsonl
from timm_reid.train.config import (PROG, RESUME_FLAGS, check_args, get_args_parser, model_option_names, parse_args,
                                    save_config)
from timm_reid.train.context import Context, OptimOptions
from timm_reid.train.errors import ConfigError
from timm_reid.train.methods import get_method
from timm_reid.train.model import ReIDNet

log = logging.getLogger("timm_reid.train")

# Files a run writes into its directory (``--overwrite`` replaces exactly these).
RUN_FILES = ("config.yaml", "log.txt", "metrics.jsonl", CHECKPOINT_FILE, "interrupted.pth", "final.pth",
             "final_metrics.json", "backbone.safetensors", "curves.png", "cmc.png", "embedding.png")
RUNS = RunFolder(run_files=RUN_FILES, has_overwrite=True, writer="timm_reid.train")


def main(args):
    """Run (or resume) a training run; returns the final metrics dict (also in final_metrics.json).

    Under torchrun every process runs this; they form one process group
    (:mod:`timm_reid.distributed`) and only rank 0 writes the run directory."""
    args, state = resume_state(args)
    check_args(args)
    if state is None:
        preflight(args)
    with session(args) as dist:
        lock = RunLock(default_output(args))  # acquired by rank 0 only, the one writer
        try:
            args.output = dist.on_main(prepare_run_dir, args, resuming=state is not None, lock=lock)
            handler = setup_logging(args.output) if dist.is_main else None
            try:
                if state is None and args.init:
                    from timm_reid.train.starting_points import resolve_init

                    args.checkpoint_path = resolve_init(args, dist)
                    if dist.is_main:
                        save_config(args, os.path.join(args.output, "config.yaml"))
                return _run(args, state, args.output, dist)
            finally:
                if handler is not None:
                    log.removeHandler(handler)
                    handler.close()
        finally:
            lock.release()


def resume_state(args):
    """With ``--resume RUN_DIR``: the stored options (threads/workers/progress/device from the command
    line) and the last checkpoint; otherwise ``(args, None)``."""
    if args.resume is None:
        return args, None
    path = os.path.join(args.resume, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {args.resume}: no {CHECKPOINT_FILE} there; is it a run directory?")
    state = load_checkpoint(path)
    # Options added since the checkpoint: defaults of the stored method's parser (the shared ones as
    # this command line resolved them); a checkpoint written before each method parsed its own
    # options also holds the other methods' defaults, which no method reads.
    known = vars(get_args_parser(add_help=False, method=state["args"].get("method")).parse_args([]))
    known.update((k, v) for k, v in vars(args).items() if k in known)
    return resumed_options(state["args"], args, defaults=known, runtime=set(RESUME_FLAGS) - {"resume"}), state


def default_output(args):
    return args.output if args.output is not None else os.path.join("runs", f"{args.preset}-seed{args.seed}")


def preflight(args):
    """Check everything a fresh run can check before its directory gets any file: the output
    folder, the dataset (a named layout is read; synthetic options are checked, and data an
    ``--overwrite`` would keep must fit them), the method's needs of the data, and the model: built
    with its patch options and initial weights file, then run once on two images of the input size
    (an unsupported model, a stage out of range, a damaged checkpoint or an AIBN stage with a 1x1
    feature map fail here). Raises :class:`ConfigError`."""
    output = default_output(args)
    _checked(lambda: check_output_folder(output, flag="--output"), "--output")
    check_run_dir(argparse.Namespace(**{**vars(args), "output": output}), resuming=False)
    num_cameras = args.synthetic_cameras
    if args.dataset in (None, "synthetic"):
        _check_synthetic_options(args, output)
    else:
        where = f"--dataset {args.dataset} --root {args.root}"
        dataset = _checked(lambda: load_data(**data_options(args, output)), where)
        num_cameras = dataset.num_cameras
        _check_evaluable(dataset, where)
        get_method(args.method).check_data(args, dataset)
    _check_model(args, num_cameras)


def _check_evaluable(dataset, what):
    """The test protocol scores a query against gallery images of its identity from other cameras;
    a dataset with one camera (or no such pairs) cannot be evaluated, nor trained across cameras."""
    if dataset.num_cameras < 2:
        raise ConfigError(f"{what}: {dataset.name} has {dataset.num_cameras} camera; camera-aware training and "
                          "the evaluation protocol (same-camera gallery images removed) need at least 2")
    if dataset.query and dataset.gallery:
        seen = {}
        for record in dataset.gallery:
            seen.setdefault(record.pid, set()).add(record.camid)
        if not any(seen.get(q.pid, set()) - {q.camid} for q in dataset.query):
            raise ConfigError(f"{what}: no query of {dataset.name} has a gallery image of its identity from another "
                              "camera, so nothing can be evaluated; check the query and gallery folders")


def _check_synthetic_options(args, output):
    from timm_reid.data.synthetic import check_synthetic_options

    root = synthetic_root(args.root, output)
    kept = "" if args.root or not os.path.isdir(root) else f" (the run's data in {root}, which --overwrite keeps)"
    _checked(lambda: check_synthetic_options(root, **synthetic_options(**data_options(args, output))),
             "the synthetic data options" + kept)


def _check_model(args, num_cameras):
    what = f"--model {args.model}" + (f" with --checkpoint-path {args.checkpoint_path}" if args.checkpoint_path else "")
    _checked(lambda: check_backbone(args.model, patch_options(args, num_cameras), args.height, args.width,
                                    checkpoint_path=args.checkpoint_path), f"{what} at {args.height}x{args.width}")


def _checked(check, what):
    return checked(check, what, error=ConfigError)


def check_run_dir(args, *, resuming):
    """Refuse an output folder that holds files unless resuming or ``--overwrite``; returns its entries."""
    return RUNS.check(args.output, resuming=resuming, overwrite=getattr(args, "overwrite", False))


def prepare_run_dir(args, *, resuming, lock=None):
    """Create the run directory (holding ``lock``, a :class:`RunLock` on it, from here on); refuse
    one that holds files unless resuming or ``--overwrite``, which deletes the old run files only
    now, after every check (:class:`timm_reid._run.RunFolder`); a new run's ``config.yaml``."""
    args.output = default_output(args)
    RUNS.prepare(args.output, resuming=resuming, overwrite=getattr(args, "overwrite", False), lock=lock)
    if not resuming:
        save_config(args, os.path.join(args.output, "config.yaml"))
    return args.output


def setup_logging(run_dir):
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(os.path.join(run_dir, "log.txt"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        log.addHandler(logging.StreamHandler(sys.stdout))
    return handler


def _run(args, state, run_dir, dist):
    start = time.time()
    torch.set_num_threads(args.threads or max((os.cpu_count() or 1) // dist.world_size, 1))
    seed_everything(args.seed)
    method = get_method(args.method)
    ctx = build_context(args, run_dir, fresh=state is None, dist=dist)
    log.info(ctx.dataset.summary())
    method.check_data(args, ctx.dataset)
    trainer = method.Trainer(ctx, args)
    eval_kw = dict(protocol=evaluation_protocol(method, args.dataset), transform=ctx.test_tf, batch_size=args.test_batch_size,
                   workers=args.workers, camera_aggregate=args.camera_aggregate, num_cameras=ctx.num_cameras, dist=dist)

    if state is None:
        log.info(f"run directory {run_dir}; method {args.method}; {dist.world_size} process(es); "
                 "evaluating the initial model")
        history, pending, position, elapsed = [], {}, trainer.start(), 0.0
        initial = evaluate_split(trainer.net, ctx.dataset, **eval_kw)
        log.info(f"initial: {format_metrics(initial['test'])}")
    else:
        check_stored_options(trainer.net.backbone, state, os.path.join(run_dir, "last.pth"))
        trainer.load_state_dict(state)
        history, pending, initial = state["history"], state["pending"], state["initial"]
        position, elapsed = tuple(state["next"]), state["elapsed"]
        log.info(f"resumed {run_dir} at {trainer.describe(position)}")

    def checkpoint(next_position, path="last.pth"):
        if not dist.is_main:
            return
        atomic_save({"args": dict(vars(args)), "method": args.method, "evaluation": eval_kw["protocol"],
                     **trainer.state_dict(), **options_entry(trainer.net.backbone), "history": history,
                     "pending": pending, "initial": initial, "next": list(next_position),
                     "elapsed": elapsed + time.time() - start}, os.path.join(run_dir, path))

    try:
        while not trainer.done(position):
            seed_everything(trainer.step_seed(position))
            fragment, position, finished = trainer.step(position)
            pending.update(fragment)
            if finished is not None:
                record = {"round": finished, **pending}
                if args.eval_every and finished % args.eval_every == 0 and finished < trainer.num_rounds:
                    record.update(evaluate_split(trainer.net, ctx.dataset, **eval_kw))
                log.info(f"round {finished}/{trainer.num_rounds}: {format_record(record)}")
                history.append(record)
                if dist.is_main:
                    write_jsonl(history, os.path.join(run_dir, "metrics.jsonl"))
                pending = {}
            checkpoint(position)
    except KeyboardInterrupt:
        checkpoint(position, path="interrupted.pth")
        log.info(f"interrupted: weights saved to {run_dir}/interrupted.pth; continue with --resume {run_dir} "
                 "(restarts the interrupted step from last.pth)")
        raise
    result = finish(args, run_dir, trainer, ctx, history=history, initial=initial,
                    wall=elapsed + time.time() - start, eval_kw=eval_kw)
    dist.barrier()  # the other ranks wait until rank 0 has written the outputs
    return result


def finish(args, run_dir, trainer, ctx, *, history, initial, wall, eval_kw):
    """Final evaluation and the run's outputs: final.pth, backbone.safetensors, final_metrics.json,
    plots (written by rank 0 only; every rank returns the metrics)."""
    from timm_reid.backbone import BACKBONE_FILE, save_backbone

    final = evaluate_split(trainer.net, ctx.dataset, **eval_kw, keep_features=not args.no_plots)
    features = final.pop("_features", None)
    result = {"initial": summary(initial), "final": summary(final), "method": args.method,
              # the protocol as the evaluation names it ("sysumm01-all-single-shot"), else its key ("reid")
              "protocol": final.get("test", {}).get("protocol", eval_kw["protocol"]),
              "rounds": trainer.num_rounds, **trainer.summary(), "world_size": ctx.dist.world_size,
              "wall_time_s": round(wall, 1)}
    if not ctx.dist.is_main:
        return result
    if history:
        history[-1].update({k: v for k, v in final.items()})
        write_jsonl(history, os.path.join(run_dir, "metrics.jsonl"))
    atomic_save({"args": dict(vars(args)), "method": args.method, "evaluation": eval_kw["protocol"],
                 **trainer.state_dict(), **options_entry(trainer.net.backbone), "num_cameras": ctx.num_cameras},
                os.path.join(run_dir, "final.pth"))
    save_backbone(trainer.net.backbone, os.path.join(run_dir, BACKBONE_FILE), model_name=args.model,
                  input_size=(args.height, args.width),
                  extra={"method": args.method, "seed": args.seed, "dataset": args.dataset or "synthetic"})
    write_json(result, os.path.join(run_dir, "final_metrics.json"))
    if not args.no_plots:
        write_plots(run_dir, history=history, initial=initial, final=final, features=features)
    log.info(format_table(result))
    return result


# ------------------------------------------------------------------------------------------------ setup

def build_context(args, run_dir, *, fresh, dist=distributed.LOCAL):
    """Data, transforms and the network factory of a run (initial weights only for a fresh run:
    a resumed one loads its checkpoint over them)."""
    data_kw = data_options(args, run_dir)
    dataset = load_data(**data_kw) if dist.is_main else None  # rank 0 generates synthetic data once
    dist.barrier()
    if dataset is None:
        dataset = load_data(**data_kw)
    train_tf, test_tf = build_transforms(args.height, args.width, pad=args.pad, random_erasing=args.random_erasing)
    optim = OptimOptions(opt=args.opt, lr=args.lr, backbone_lr_mult=args.backbone_lr_mult,
                         weight_decay=args.weight_decay, momentum=args.momentum)

    def make_net():
        net = build_net_from_args(args, dataset.num_cameras, initial_weights=fresh)
        if fresh and args.calibrate_aibn:
            calibrate_initial_aibn(net, args, dataset, test_tf)
        net = dist.attach(net, args.device)
        dist.broadcast_module(net)
        return net

    return Context(dataset=dataset, num_cameras=dataset.num_cameras, train_tf=train_tf, test_tf=test_tf,
                   device=args.device, workers=args.workers, test_batch_size=args.test_batch_size,
                   progress=not args.no_progress and dist.is_main, seed=args.seed, center=args.center_features,
                   k1=args.k1,
                   k2=args.k2, lambda_value=args.lambda_value, batch_size=args.batch_size,
                   num_instances=args.num_instances, optim=optim, make_net=make_net, dist=dist)


def data_options(args, run_dir):
    """The keywords of :func:`load_data` for the run's options."""
    return dict(dataset=args.dataset, root=args.root, trial=getattr(args, "trial", None), run_dir=run_dir, seed=args.seed,
                num_identities=args.synthetic_identities, num_test_identities=args.synthetic_test_identities,
                num_cameras=args.synthetic_cameras, style_strength=args.style_strength, height=args.height,
                width=args.width)


def load_data(*, dataset, root, run_dir, seed, num_identities, num_test_identities, num_cameras, style_strength,
              height, width, trial=None):
    """The dataset named ``dataset`` in ``root`` (RegDB: split ``trial``, default 1); without a
    name, synthetic data generated (once) into ``root`` or ``RUN_DIR/data`` with the run's seed."""
    from timm_reid.data import build_dataset

    if trial is not None and dataset != "regdb":
        raise ConfigError(f"--trial {trial} picks a RegDB split; --dataset {dataset or 'synthetic'} has none: "
                          "drop --trial")
    if dataset is None or dataset == "synthetic":
        return build_dataset("synthetic", synthetic_root(root, run_dir), **synthetic_options(
            seed=seed, num_identities=num_identities, num_test_identities=num_test_identities, num_cameras=num_cameras,
            style_strength=style_strength, height=height, width=width))
    if root is None:
        raise ConfigError(f"--dataset {dataset} needs --root DIR, the folder that holds the dataset")
    return build_dataset(dataset, root, **({"trial": trial} if trial is not None else {}))


def evaluation_protocol(method, dataset):
    """The test protocol of a run: a layout that is a protocol of its own (``sysumm01``, ``regdb``:
    their query/gallery rules are part of the data), else the method's ``EVALUATION``."""
    return dataset if dataset in PROTOCOLS else method.EVALUATION


def synthetic_root(root, run_dir):
    return root or os.path.join(run_dir, "data")


def synthetic_options(*, seed, num_identities, num_test_identities, num_cameras, style_strength, height, width,
                      **_):
    """The generator options of the run's synthetic data (``**_``: the other :func:`data_options`)."""
    return dict(seed=seed, num_identities=num_identities, num_test_identities=num_test_identities,
                num_cameras=num_cameras, style_strength=style_strength, image_size=(height, width))


def build_transforms(height, width, *, pad=10, random_erasing=0.5):
    """(train, test) transforms; training: flip, pad + random crop, random erasing."""
    from timm_reid.data import build_transforms as _build

    return (_build(height, width, train=True, pad=pad, random_erasing_p=random_erasing),
            _build(height, width, train=False))


def patch_options(args, num_cameras):
    """The run's :class:`timm_reid.PatchOptions`, from its model options (``--aibn-entry`` -> ``entry``;
    see ``PatchOptions.from_flags``)."""
    from timm_reid.options import PatchOptions

    return PatchOptions.from_flags(argparse.Namespace(**{k: getattr(args, k) for k in model_option_names()
                                                          if hasattr(args, k)}), num_cameras)


def build_net_from_args(args, num_cameras, *, initial_weights=True):
    """A fresh :class:`ReIDNet` of the run's model options (``--pretrained`` / ``--checkpoint-path``
    weights loaded when ``initial_weights``)."""
    from timm_reid.factory import create_model

    backbone = create_model(args.model, patch_options(args, num_cameras),
                            pretrained=args.pretrained and initial_weights,
                            checkpoint_path=args.checkpoint_path if initial_weights else None, num_classes=0)
    return ReIDNet(backbone).to(args.device)


def calibrate_initial_aibn(net, args, dataset, transform):
    """``--calibrate-aibn N``: AIBN running statistics from N training images drawn with the run's
    seed (by their own generator; every step reseeds the run's streams anyway); with
    ``--calibrate-aibn-affine`` also each AIBN affine fitted to the unpatched norm it replaced."""
    from torch.utils.data import DataLoader

    from timm_reid.data import ImageDataset
    from timm_reid.layers import calibrate_aibn

    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(dataset.train), generator=g)[:args.calibrate_aibn].tolist()
    loader = DataLoader(ImageDataset([dataset.train[i] for i in order], transform), batch_size=args.test_batch_size)
    batches = [(images.to(args.device), camids.to(args.device)) for images, _, camids, _ in loader]
    reference = None
    if args.calibrate_aibn_affine:
        unpatched = type(args)(**{**vars(args), "aibn": []})
        reference = build_net_from_args(unpatched, dataset.num_cameras).backbone
    seen = calibrate_aibn(net.backbone, batches, reference=reference)
    log.info(f"AIBN calibrated on {seen} training images" + (" (statistics and affine)" if reference else ""))
    _warn_if_calibration_changes_nothing(net.backbone, refit=reference is not None)


def _warn_if_calibration_changes_nothing(backbone, *, refit):
    """Blended AIBNs over a LayerNorm at blend 0 compute the LayerNorm itself: statistics calibrated
    there do not change the start (a BatchNorm base reads the calibrated running statistics)."""
    from timm_reid.layers.blend import BlendedAIBN

    blended = [m for m in backbone.modules() if isinstance(m, BlendedAIBN)]
    unchanged = [m for m in blended if m.base == "layernorm" and float(m.blend_weight()) == 0.0]
    if blended and len(unchanged) == len(blended) and not refit:
        message = (f"--calibrate-aibn changed no output at the start: all {len(blended)} AIBN layers are blended into "
                   "LayerNorms from weight 0 (--aibn-entry blend), so their calibrated statistics matter only once "
                   "training blends them in; use --aibn-entry replace for a calibrated start")
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)


# ------------------------------------------------------------------------------------------------ evaluation

def summary(split_metrics):
    keys = ("mAP", "rank1", "rank5", "rank10", "mINP", "same_camera_top1", "protocol")  # protocol: not reid
    out = {k: split_metrics["test"][k] for k in keys if k in split_metrics.get("test", {})}
    if "val" in split_metrics:
        out["val"] = {k: split_metrics["val"][k] for k in keys if k in split_metrics["val"]}
    return out


# ------------------------------------------------------------------------------------------------ output

def format_record(record):
    parts = []
    for k, v in record.items():
        if k in ("round",) or isinstance(v, (dict, list)):
            if k.endswith("_seconds"):
                parts.append(f"{k}=" + "/".join(f"{x:.0f}" for x in v.values()))
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    if "test" in record:
        parts.append("test: " + format_metrics(record["test"]))
    return " ".join(parts)


def format_table(result):
    rows = [("initial", result["initial"]), ("final", result["final"])]
    lines = [f"{'model':<10}{'mAP':>8}{'rank-1':>8}{'same-cam top-1':>16}"]
    for name, m in rows:
        lines.append(f"{name:<10}{_percent(m, 'mAP', 8)}{_percent(m, 'rank1', 8)}{_percent(m, 'same_camera_top1', 16)}")
    note = "  (inter cluster count: ORACLE = true identity count)" if result.get("oracle_clusters") else ""
    return "\n".join(lines) + f"\n{result['rounds']} rounds, {result['wall_time_s']:.0f} s{note}"


def _percent(metrics, key, width):
    """``metrics[key]`` as a percentage right-aligned in ``width``; "-" where the metric does not
    apply (the visible-infrared protocols have no same-camera top-1) or is not a number."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{'-':>{width}}"
    return f"{100 * value:>{width - 1}.1f}%"


def write_plots(run_dir, *, history, initial, final, features):
    try:
        from timm_reid.train import plots
    except ImportError as e:  # matplotlib missing: plots are optional output
        log.info(f"no plots ({e})")
        return
    plots.plot_curves(history, initial, os.path.join(run_dir, "curves.png"))
    if "cmc" in final.get("test", {}):
        plots.plot_cmc(initial["test"].get("cmc"), final["test"]["cmc"], os.path.join(run_dir, "cmc.png"))
    if features is not None:
        plots.plot_embedding(*features, os.path.join(run_dir, "embedding.png"))




def cli(argv=None):
    """``python -m timm_reid.train``: configuration errors print one paragraph and exit with status 2."""
    try:
        main(parse_args(argv))
    except USER_ERRORS as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
