"""Command-line options of the reference pipeline: argparse parser, YAML presets, resolution.

Precedence, lowest to highest: parser defaults < preset (``--preset NAME``, a YAML file shipped in
``timm_reid/train/presets/``) < ``--config FILE`` < command-line flags. The resolved options are
written to ``RUN_DIR/config.yaml`` and stored in every checkpoint.
"""

import argparse
import os
from importlib import resources

import yaml

PRESETS = ("demo", "iics", "iids")


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        prog="python -m timm_reid.train",
        description="timm-reid: two-stage unsupervised person re-ID training (IICS, with IIDS options)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    g = parser.add_argument_group("config")
    g.add_argument("--preset", default=None, choices=PRESETS,
                   help="YAML preset giving the defaults; None means 'demo' without --dataset, 'iics' with it")
    g.add_argument("--config", default=None, metavar="FILE", help="YAML file of option values (over the preset)")
    g.add_argument("--output", default=None, metavar="RUN_DIR",
                   help="run directory (None: runs/<preset>-seed<seed>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its stored options")
    g.add_argument("--seed", default=0, type=int, help="seed of everything (data generation included)")
    g.add_argument("--threads", default=None, type=int, help="torch CPU threads (None: all cores)")
    g.add_argument("--device", default="cpu", help="torch device")
    g.add_argument("--no-progress", action="store_true", help="disable progress bars")
    g.add_argument("--no-plots", action="store_true", help="do not draw plots at the end")

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="dataset layout name (market1501, dukemtmc, msmt17, ...); None: generate synthetic data")
    g.add_argument("--root", default=None, metavar="DIR", help="dataset folder (or where synthetic data is written)")
    g.add_argument("--synthetic-identities", default=150, type=int, help="synthetic data: train identities")
    g.add_argument("--synthetic-test-identities", default=100, type=int, help="synthetic data: test identities")
    g.add_argument("--synthetic-cameras", default=5, type=int, help="synthetic data: number of cameras")
    g.add_argument("--style-strength", default=1.0, type=float,
                   help="synthetic data: camera style strength (1 weak, 4 strong; see timm_reid.data.synthetic)")
    g.add_argument("--height", default=256, type=int, help="input height")
    g.add_argument("--width", default=128, type=int, help="input width")
    g.add_argument("--pad", default=10, type=int, help="training augmentation: zero padding before the random crop")
    g.add_argument("--random-erasing", default=0.5, type=float, help="training augmentation: random erasing probability")
    g.add_argument("--workers", default=0, type=int, help="data-loader worker processes")
    g.add_argument("--test-batch-size", default=128, type=int, help="batch size of feature extraction")

    g = parser.add_argument_group("model")
    g.add_argument("--model", default="resnet50", help="timm model name")
    g.add_argument("--pretrained", default=False, action=argparse.BooleanOptionalAction, help="load timm's pretrained weights (hub download)")
    g.add_argument("--checkpoint-path", default=None, metavar="FILE", help="initial backbone weights from a file")
    g.add_argument("--aibn", default=[], type=int, nargs="*", help="stages (from 1) whose norms become AIBN")
    g.add_argument("--tnorm", default=[], type=int, nargs="*", help="stages (from 1) followed by a TNorm")
    g.add_argument("--aibn-mix", default="var", choices=("var", "std"),
                   help="AIBN mixing: variances (IICS) or standard deviations (Qureshi & Dehghani)")
    g.add_argument("--aibn-gate-init", default=0.1, type=float, help="initial AIBN gate (weight of batch stats)")
    g.add_argument("--aibn-entry", default="replace", choices=("replace", "blend"),
                   help="how AIBN enters the backbone: replace its norms (papers) or blend in beside them from 0 "
                        "(keeps a pretrained backbone's function; see timm_reid.patch)")
    g.add_argument("--tnorm-mode", default="transform", choices=("transform", "normalize"),
                   help="TNorm: IIDS style transform or per-camera normalization (Qureshi & Dehghani)")
    g.add_argument("--last-stride", default=None, type=int, help="stride of the last stage (ReID: 1); None keeps it")

    g = parser.add_argument_group("schedule")
    g.add_argument("--rounds", default=40, type=int, help="rounds of (intra stage, inter stage)")
    g.add_argument("--stages", default=["intra", "inter"], nargs="+", choices=("intra", "inter"),
                   help="stages run in each round")
    g.add_argument("--intra-epochs", default=2, type=int, help="epochs of the intra stage per round")
    g.add_argument("--inter-epochs", default=2, type=int, help="epochs of the inter stage per round")
    g.add_argument("--intra-batch-size", default=8, type=int, help="intra stage: images per camera per step")
    g.add_argument("--intra-joint-forward", default=False, action=argparse.BooleanOptionalAction,
                   help="intra stage: one forward over the multi-camera batch instead of one per camera "
                        "(identical results unless the backbone has AIBN, whose batch statistics then mix cameras)")
    g.add_argument("--batch-size", default=64, type=int, help="inter stage batch size (P x K)")
    g.add_argument("--num-instances", default=4, type=int, help="inter stage: images per pseudo identity (K)")
    g.add_argument("--eval-every", default=5, type=int,
                   help="evaluate on the test split every N rounds (diagnostic only; 0: only initial and final)")

    g = parser.add_argument_group("clustering")
    g.add_argument("--intra-clusters", default=600, type=int, help="clusters per camera (intra stage)")
    g.add_argument("--intra-threshold-quantile", default=None, type=float,
                   help="IIDS rule instead of a count: cut each camera's clustering at this quantile of its "
                        "pairwise distances (IIDS: 0.0025)")
    g.add_argument("--inter-clusters", default=800, type=int, help="clusters over all cameras (inter stage)")
    g.add_argument("--inter-threshold-quantile", default=None, type=float,
                   help="IIDS rule instead of a count: cut at this quantile of the pairwise distances (IIDS: 0.0017)")
    g.add_argument("--oracle-clusters", default=False, action=argparse.BooleanOptionalAction,
                   help="ORACLE: inter cluster count = true number of train identities (diagnostic, not unsupervised)")
    g.add_argument("--drop-singletons", default=False, action=argparse.BooleanOptionalAction,
                   help="train without single-image clusters, both stages (IIDS)")
    g.add_argument("--k1", default=20, type=int, help="k-reciprocal re-ranking k1")
    g.add_argument("--k2", default=6, type=int, help="k-reciprocal re-ranking k2")
    g.add_argument("--lambda-value", default=0.3, type=float, help="re-ranking weight of the original distance")
    g.add_argument("--rerank", default=True, action=argparse.BooleanOptionalAction,
                   help="k-reciprocal re-ranking before clustering (--no-rerank: plain cosine distance)")
    g.add_argument("--mu0", default=0.02, type=float, help="Jaccard weight mu_0 (0 turns the term off)")
    g.add_argument("--mu-power", default=0.6, type=float, help="mu_r = mu_0 (1 - r / R) ** power")
    g.add_argument("--center-features", default=False, action=argparse.BooleanOptionalAction,
                   help="subtract each camera's mean feature before clustering (camera-aware centring)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--opt", default="sgd", choices=("sgd", "adamw"), help="optimizer")
    g.add_argument("--lr", default=0.005, type=float, help="learning rate of the heads")
    g.add_argument("--backbone-lr-mult", default=0.1, type=float, help="backbone lr = lr * this")
    g.add_argument("--inter-lr-scale", default=2.0, type=float,
                   help="inter stage lr = lr * this (reference: batch_size / 32)")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("--weight-decay", default=5e-4, type=float, help="weight decay")
    g.add_argument("--margin", default=0.3, type=float, help="batch-hard triplet margin")
    g.add_argument("--triplet-weight", default=1.0, type=float, help="weight of the triplet loss")
    g.add_argument("--head-init", default="random", choices=("random", "centroid"),
                   help="classifier heads, rebuilt every stage: N(0, 0.001) weights (reference) or the "
                        "clusters' mean features (a cosine classifier; learns far faster on short schedules)")
    g.add_argument("--head-temperature", default=0.1, type=float,
                   help="--head-init centroid: logits start as cosine / this")

    g = parser.add_argument_group("IIDS options")
    g.add_argument("--self-distill", default=0.0, type=float,
                   help="weight of two-view self-distillation (0: off; IIDS: 1)")
    g.add_argument("--convert-prob", default=0.0, type=float,
                   help="probability that the second view's forward uses TNorm style conversion (IIDS: 0.5)")
    g.add_argument("--camera-aggregate", default=False, action=argparse.BooleanOptionalAction,
                   help="test features summed over TNorm conversions to every camera (IIDS)")
    return parser


def preset_path(name):
    return resources.files("timm_reid.train").joinpath("presets", f"{name}.yaml")


def load_yaml(path, parser):
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    known = {a.dest for a in parser._actions}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; see --help for the valid names")
    return values


def parse_args(argv=None):
    """Parse ``argv`` with preset and config-file defaults; flags given on the command line win.

    ``--help`` shows the defaults of the chosen preset (``--preset iids --help``).
    """
    parser = get_args_parser()
    first, _ = get_args_parser(add_help=False).parse_known_args(argv)
    preset = first.preset or ("demo" if first.dataset is None else "iics")
    parser.set_defaults(**load_yaml(preset_path(preset), parser), preset=preset)
    if first.config is not None:
        if not os.path.isfile(first.config):
            raise FileNotFoundError(f"--config {first.config}: no such file")
        parser.set_defaults(**load_yaml(first.config, parser))
    return parser.parse_args(argv)


def save_config(args, path):
    with open(path, "w") as f:
        yaml.safe_dump(dict(sorted(vars(args).items())), f, sort_keys=False)


def check_args(args):
    """Reject inconsistent options before any work starts (errors name the option and the fix)."""
    positive = ("rounds", "intra_epochs", "inter_epochs", "intra_batch_size", "batch_size", "num_instances",
                "intra_clusters", "inter_clusters", "height", "width", "test_batch_size")
    for name in positive:
        if getattr(args, name) < 1 and not (name.endswith("epochs") and getattr(args, name) == 0):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size % args.num_instances:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of --num-instances "
                         f"{args.num_instances} (P identities x K images)")
    if (args.convert_prob > 0 or args.camera_aggregate) and not args.tnorm:
        raise ValueError("--convert-prob > 0 and --camera-aggregate need TNorm layers: add --tnorm STAGE ...")
    if args.convert_prob > 0 and args.self_distill <= 0:
        raise ValueError("--convert-prob acts on the second view of self-distillation: set --self-distill > 0")
    if not 0 <= args.convert_prob <= 1:
        raise ValueError(f"--convert-prob must be a probability in [0, 1], got {args.convert_prob}")
    for stage in ("intra", "inter"):
        q = getattr(args, f"{stage}_threshold_quantile")
        if q is not None and not 0 < q < 1:
            raise ValueError(f"--{stage}-threshold-quantile must lie in (0, 1), got {q}")
    if args.head_temperature <= 0:
        raise ValueError(f"--head-temperature must be > 0, got {args.head_temperature}")
    if args.mu0 < 0:
        raise ValueError(f"--mu0 must be >= 0, got {args.mu0}")
    if len(set(args.stages)) != len(args.stages):
        raise ValueError(f"--stages lists a stage twice: {args.stages}")
    if args.pretrained and args.checkpoint_path:
        raise ValueError("give either --pretrained (timm hub weights) or --checkpoint-path FILE, not both")
