"""Evaluate a trained backbone or training checkpoint on a re-ID test split.

    timm-reid-evaluate --backbone RUN/backbone.safetensors --dataset market1501 --root DIR
    timm-reid-evaluate --checkpoint RUN/final.pth [--data DIR] [--output-json metrics.json]
    python -m timm_reid.evaluate_cli ...                      # the same without the console script

``--backbone`` takes a file written by :func:`timm_reid.save_backbone` (or a run directory holding
``backbone.safetensors``) and evaluates at the input size stored with it; ``--checkpoint`` takes
``final.pth`` / ``last.pth`` of a ``timm_reid.train`` run, whose stored options rebuild the model and
name the run's dataset. Prints mAP, CMC ranks, mINP and (``--protocol reid``) the same-camera top-1
share. ``--protocol`` is the test protocol: ``reid`` (Market-1501 query/gallery), ``sysumm01`` or
``regdb`` (visible-infrared, the data read with that layout: ``--root`` the SYSU-MM01 folder, or a
timm-reid synthetic visible-infrared one; the RegDB folder, its split ``--trial``: by default a
checkpoint run's own, else 1); by default the protocol a checkpoint's run evaluated with, else
``reid``.

The module is not called ``timm_reid.evaluate``: that name is the evaluation function
(``timm_reid.evaluate``), and a module of the same dotted name would replace it on import.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from timm_reid._cli import UsageError, fail, prog_name
from timm_reid.evaluation.splits import PROTOCOLS

__all__ = ["get_args_parser", "main", "run"]

_PROG = ("timm-reid-evaluate", "timm_reid.evaluate_cli")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name(*_PROG), allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate a trained backbone (backbone.safetensors) or a timm_reid.train checkpoint "
                    "on the query/gallery (and validation) split of a re-ID dataset.")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--backbone", metavar="FILE", help="backbone.safetensors file or a run directory holding one")
    model.add_argument("--checkpoint", metavar="FILE", help="final.pth / last.pth of a timm_reid.train run")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="layout: market1501, dukemtmc, msmt17, csv, synthetic (None: the checkpoint's, or "
                             "detected for a timm-reid synthetic dataset)")
    parser.add_argument("--root", "--data", dest="root", default=None, metavar="DIR",
                        help="dataset folder (None: the checkpoint run's data)")
    parser.add_argument("--protocol", default=None, choices=PROTOCOLS,
                        help="test protocol: reid (query/gallery), or visible-infrared sysumm01 / regdb (the data "
                             "read with that layout; RegDB: the split of --trial) (None: the checkpoint's, else reid)")
    parser.add_argument("--trial", default=None, type=int, metavar="T",
                        help="--protocol regdb: which of RegDB's 10 published splits (None: the checkpoint run's, else 1)")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="evaluation image size (None: the size the model was trained at)")
    parser.add_argument("--camera-aggregate", default=None, action=argparse.BooleanOptionalAction,
                        help="IIDS camera-aggregated test features (None: as trained; off for --backbone)")
    parser.add_argument("--batch-size", default=128, type=int, help="feature-extraction batch size")
    parser.add_argument("--workers", default=0, type=int, help="data-loader worker processes")
    parser.add_argument("--threads", default=None, type=int, help="torch CPU threads (None: all cores)")
    parser.add_argument("--device", default=None, help="torch device (None: cuda if available, else cpu)")
    parser.add_argument("--output-json", "--output", dest="output_json", default=None, metavar="FILE",
                        help="also write the metrics (fractions) as JSON here; must not exist unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-json file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: returns the exit status (2 for configuration and data errors)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (UsageError, OSError, ValueError) as err:  # OSError: missing files, unreadable images (named)
        return fail(parser.prog, err)
    return 0


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the parsed ``args`` say; returns ``{"test": metrics[, "val": metrics]}``."""
    _check_args(args)
    import torch

    from timm_reid.evaluation.splits import evaluate_split, format_metrics

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backbone is not None:
        net, spec = _backbone_net(args.backbone)
    else:
        net, spec = _checkpoint_net(args.checkpoint)
    protocol = args.protocol or spec["protocol"]
    if args.trial is not None and protocol != "regdb":
        raise UsageError(f"--trial picks a RegDB split; --protocol {protocol} has none: drop --trial")
    dataset = _load_vi_dataset(args, spec, protocol) if protocol != "reid" else _load_dataset(args, spec)
    height, width = args.input_size or spec["input_size"]
    aggregate = spec["camera_aggregate"] if args.camera_aggregate is None else args.camera_aggregate
    if aggregate and not spec["num_cameras"]:
        raise UsageError("--camera-aggregate needs a model with TNorm layers (built with num_cameras); this one has none")
    from timm_reid.data import build_transforms

    metrics = evaluate_split(net.to(device), dataset, transform=build_transforms(height, width, train=False),
                             protocol=protocol, batch_size=args.batch_size, workers=args.workers,
                             camera_aggregate=aggregate, num_cameras=spec["num_cameras"])
    print(dataset.summary())
    for split, m in metrics.items():  # only the metrics the protocol has
        more = " ".join(f"{k}={100 * m[k]:.1f}" for k in ("rank5", "rank10", "mINP") if k in m)
        name = split if protocol == "reid" else f"{split} ({m.get('protocol', protocol)})"
        print(f"{name}: {format_metrics(m)} {more}")
    if args.output_json:
        _write_json(metrics, args.output_json)
    return metrics


def _check_args(args) -> None:
    for name in ("batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.input_size is not None and min(args.input_size) < 1:
        raise UsageError(f"--input-size H W must be positive, got {args.input_size}")
    if args.backbone is not None and args.root is None:
        raise UsageError("--backbone needs the data to evaluate on: --dataset NAME --root DIR, or --data DIR "
                         "for a timm-reid synthetic dataset")
    if args.output_json and os.path.exists(args.output_json) and not args.overwrite:
        raise UsageError(f"--output-json {args.output_json} already exists; choose another file or pass --overwrite")
    folder = os.path.dirname(os.path.abspath(args.output_json)) if args.output_json else None
    if folder is not None and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
        raise UsageError(f"--output-json {args.output_json}: the folder {folder} does not exist or is not writable; "
                         "create it first (checked before the evaluation, which may take long)")
    from timm_reid.data import DATASETS

    if args.dataset is not None and args.dataset not in (*DATASETS, *_VI_LAYOUTS):
        raise UsageError(f"--dataset {args.dataset}: unknown layout; choose one of "
                         f"{', '.join((*DATASETS, *_VI_LAYOUTS))}")


# ------------------------------------------------------------------------------------------------ models

def _backbone_net(path):
    from timm_reid.backbone import load_backbone

    backbone = load_backbone(path)
    record = backbone.timm_reid_backbone
    spec = {"input_size": tuple(record["input_size"]), "num_cameras": record["patch"].get("num_cameras"),
            "camera_aggregate": False, "train_args": None, "protocol": "reid"}
    return backbone, spec


def _checkpoint_net(path):
    """The backbone of a ``timm_reid.train`` checkpoint, rebuilt from its stored options (the heads
    a checkpoint also holds play no part in retrieval)."""
    from timm_reid._run import load_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    try:
        state = load_checkpoint(path)
    except (OSError, ValueError):  # load_checkpoint's own errors name the file
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        raise ValueError(f"{path} is not a readable timm-reid checkpoint ({type(exc).__name__}: {exc})") from None
    a = argparse.Namespace(**state["args"])
    num_cameras = state.get("num_cameras", getattr(a, "synthetic_cameras", None))
    backbone = _stored_backbone(a, num_cameras, state["model"], path, split=state.get("dual_stream"))
    spec = {"input_size": (a.height, a.width), "num_cameras": num_cameras if a.tnorm else None,
            "camera_aggregate": bool(getattr(a, "camera_aggregate", False)), "train_args": a,
            "checkpoint": path, "protocol": state.get("evaluation", "reid")}  # the method's test protocol
    return backbone, spec


def _stored_backbone(train_args, num_cameras, model_state, path, split=None):
    """``create_model`` with the run's model flags (``--aibn-KEY`` / ``--tnorm-KEY`` / ``--KEY`` name
    the patch option ``KEY``: ``PatchOptions.from_flags``), loaded with the ``backbone.*`` weights;
    ``split``: a GUR checkpoint's dual-stream split, applied before the weights load."""
    from timm_reid.factory import create_model
    from timm_reid.options import PatchOptions

    flags = argparse.Namespace(**{k: v for k, v in vars(train_args).items()
                                  if k in ("aibn", "tnorm", "last_stride") or k.startswith(("aibn_", "tnorm_"))})
    backbone = create_model(train_args.model, PatchOptions.from_flags(flags, num_cameras), num_classes=0)
    if split is not None:
        from timm_reid.models.dual_stream import dual_stream

        dual_stream(backbone, split["infrared_cameras"], num_cameras=split.get("num_cameras", num_cameras),
                    specific_stages=split["specific_stages"])
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} holds no backbone weights (no 'backbone.*' entries in its model)")
    backbone.load_state_dict(weights)
    return backbone


# ------------------------------------------------------------------------------------------------ data

def _load_dataset(args, spec):
    from timm_reid.data import build_dataset

    train_args = spec["train_args"]
    name = args.dataset or (train_args.dataset if train_args else _detect_layout(args.root))
    if name is None and train_args is None:
        raise UsageError(f"cannot tell the layout of {args.root}: pass --dataset NAME "
                         "(market1501, dukemtmc, msmt17, csv, synthetic)")
    if name is None or name == "synthetic":
        return _load_synthetic(args.root, spec)
    root = args.root or train_args.root
    if root is None:
        raise UsageError(f"--dataset {name} needs --root DIR, the folder that holds the dataset")
    return build_dataset(name, root)


_VI_LAYOUTS = ("sysumm01", "regdb")  # read by the visible-infrared protocols of the same name


def _load_vi_dataset(args, spec, protocol):
    """The data of a visible-infrared ``protocol``: its own layout (a timm-reid synthetic
    visible-infrared folder is SYSU-MM01's), from ``--root`` or the checkpoint run's ``--root``."""
    from timm_reid.data import load_regdb, load_sysumm01

    train_args = spec["train_args"]
    name = args.dataset or (train_args.dataset if train_args else None) or protocol
    if name not in (protocol, "synthetic"):
        raise UsageError(f"--protocol {protocol} evaluates the {protocol} layout, not --dataset {name}; "
                         f"pass --dataset {protocol} (or leave it out), or --protocol reid")
    root = args.root or (train_args.root if train_args else None)
    if root is None:
        raise UsageError(f"--protocol {protocol} needs --root DIR, the folder of the {protocol} data")
    if protocol == "regdb":
        trial = args.trial or (getattr(train_args, "trial", None) if train_args else None) or 1
        return load_regdb(root, trial=trial)
    meta = _synthetic_meta(root)
    return load_sysumm01(root, name="synthetic-vi" if meta is not None else "sysumm01")


def _detect_layout(root):
    """``"synthetic"`` for a folder written by timm_reid.data.synthetic, else None."""
    return "synthetic" if _synthetic_meta(root) is not None else None


def _synthetic_meta(root):
    path = os.path.join(root, "meta.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == "timm_reid.data.synthetic" else None


def _load_synthetic(root, spec):
    """An existing synthetic dataset as stored; the checkpoint run's data generated only into a
    missing or empty folder, never into a folder of other files."""
    from timm_reid.data.synthetic import load_synthetic

    train_args = spec["train_args"]
    if root is None:  # the run's own data: its --root, or RUN/data next to the checkpoint
        root = train_args.root or os.path.join(os.path.dirname(os.path.abspath(spec["checkpoint"])), "data")
    meta = _synthetic_meta(root)
    if meta is not None:
        return load_synthetic(root, **meta["config"])
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise UsageError(f"{root} is not empty and is not a timm-reid synthetic dataset (no meta.json written by "
                         "timm_reid.data.synthetic); nothing was generated into it. Pass --dataset NAME for its "
                         "layout, or a new or empty folder to generate the run's synthetic data in")
    if train_args is None:
        raise UsageError(f"{root} holds no dataset; create one with timm-reid-synthetic --out {root}, or pass "
                         "--dataset NAME --root DIR")
    a = train_args
    return load_synthetic(root, seed=a.seed, num_identities=a.synthetic_identities,
                          num_test_identities=a.synthetic_test_identities, num_cameras=a.synthetic_cameras,
                          style_strength=a.style_strength, image_size=(a.height, a.width))


def _write_json(metrics, path):
    from timm_reid._run import write_json

    write_json(metrics, path)


if __name__ == "__main__":
    sys.exit(main())
