"""IICS (Xuan & Zhang, CVPR 2021), with the IIDS (TPAMI 2022) options: rounds of an intra-camera
stage and an inter-camera stage (the stages themselves are in :mod:`timm_reid.train.engine`).

Reading order: the options (:class:`Options`, shown in ``--help`` as "method iics"), their checks,
and :class:`Trainer`, which the harness (:mod:`timm_reid.train.pipeline`) drives one stage at a
time; a checkpoint is written after every stage, at position ``(round, stage)``.
"""

import argparse
from dataclasses import dataclass, fields
from typing import List, Optional

from timm_reid.train import engine
from timm_reid.train.auto_options import is_auto, number_or_auto
from timm_reid.train.checkpoint import stage_seed
from timm_reid.train.errors import ConfigError

NAME = "iics"


@dataclass(frozen=True)
class Options:
    rounds: int
    stages: List[str]
    intra_epochs: int
    inter_epochs: int
    intra_batch_size: int
    intra_joint_forward: bool
    intra_clusters: object  # int, or "auto"
    intra_threshold_quantile: Optional[float]
    inter_clusters: object  # int, or "auto"
    inter_threshold_quantile: Optional[float]
    oracle_clusters: bool
    drop_singletons: bool
    rerank: bool
    mu0: float
    mu_power: float
    inter_lr_scale: float
    margin: float
    triplet_weight: float
    head_init: str
    head_temperature: float
    self_distill: float
    convert_prob: float
    camera_aggregate: bool

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def add_arguments(parser):
    g = parser.add_argument_group("method iics", "IICS: rounds of intra-camera and inter-camera stages")
    g.add_argument("--rounds", default=40, type=int, help="rounds of (intra stage, inter stage)")
    g.add_argument("--stages", default=["intra", "inter"], nargs="+", choices=("intra", "inter"),
                   help="stages run in each round")
    g.add_argument("--intra-epochs", default=2, type=int, help="epochs of the intra stage per round")
    g.add_argument("--inter-epochs", default=2, type=int, help="epochs of the inter stage per round")
    g.add_argument("--intra-batch-size", default=8, type=int, help="intra stage: images per camera per step")
    g.add_argument("--intra-joint-forward", default=False, action=argparse.BooleanOptionalAction,
                   help="intra stage: one forward over the multi-camera batch instead of one per camera "
                        "(identical results unless the backbone has AIBN, whose batch statistics then mix cameras)")
    g.add_argument("--intra-clusters", default=600, type=number_or_auto(int),
                   help="clusters per camera (intra stage), or auto: estimated for each camera at every round "
                        "(timm_reid.cluster.estimate_camera_cluster_counts)")
    g.add_argument("--intra-threshold-quantile", default=None, type=float,
                   help="IIDS rule instead of a count: cut each camera's clustering at this quantile of its "
                        "pairwise distances (IIDS: 0.0025)")
    g.add_argument("--inter-clusters", default=800, type=number_or_auto(int),
                   help="clusters over all cameras (inter stage), or auto: estimated at every round "
                        "(timm_reid.cluster.estimate_num_clusters)")
    g.add_argument("--inter-threshold-quantile", default=None, type=float,
                   help="IIDS rule instead of a count: cut at this quantile of the pairwise distances (IIDS: 0.0017)")
    g.add_argument("--oracle-clusters", default=False, action=argparse.BooleanOptionalAction,
                   help="ORACLE: inter cluster count = true number of train identities (diagnostic, not unsupervised)")
    g.add_argument("--drop-singletons", default=False, action=argparse.BooleanOptionalAction,
                   help="train without single-image clusters, both stages (IIDS)")
    g.add_argument("--rerank", default=True, action=argparse.BooleanOptionalAction,
                   help="k-reciprocal re-ranking before clustering (--no-rerank: plain cosine distance)")
    g.add_argument("--mu0", default=0.02, type=float, help="Jaccard weight mu_0 (0 turns the term off)")
    g.add_argument("--mu-power", default=0.6, type=float, help="mu_r = mu_0 (1 - r / R) ** power")
    g.add_argument("--inter-lr-scale", default=2.0, type=float,
                   help="inter stage lr = lr * this (reference: batch_size / 32)")
    g.add_argument("--margin", default=0.3, type=float, help="batch-hard triplet margin")
    g.add_argument("--triplet-weight", default=1.0, type=float, help="weight of the triplet loss")
    g.add_argument("--head-init", default="random", choices=("random", "centroid"),
                   help="classifier heads, rebuilt every stage: N(0, 0.001) weights (reference) or the "
                        "clusters' mean features (a cosine classifier; learns far faster on short schedules)")
    g.add_argument("--head-temperature", default=0.1, type=float,
                   help="--head-init centroid: logits start as cosine / this")
    g.add_argument("--self-distill", default=0.0, type=float,
                   help="IIDS: weight of two-view self-distillation (0: off; IIDS: 1)")
    g.add_argument("--convert-prob", default=0.0, type=float,
                   help="IIDS: probability that the second view's forward uses TNorm style conversion (IIDS: 0.5)")
    g.add_argument("--camera-aggregate", default=False, action=argparse.BooleanOptionalAction,
                   help="IIDS: test features summed over TNorm conversions to every camera")


def check(args):
    """Reject inconsistent IICS options before any work starts."""
    for name in ("intra_clusters", "inter_clusters"):
        value = getattr(args, name)
        if not is_auto(value) and not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be auto or an integer >= 1, got {value}")
    for name in ("rounds", "intra_batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("intra_epochs", "inter_epochs"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if (args.convert_prob > 0 or args.camera_aggregate) and not args.tnorm:
        raise ConfigError("--convert-prob > 0 and --camera-aggregate need TNorm layers: add --tnorm STAGE ...")
    if args.convert_prob > 0 and args.self_distill <= 0:
        raise ConfigError("--convert-prob acts on the second view of self-distillation: set --self-distill > 0")
    if not 0 <= args.convert_prob <= 1:
        raise ConfigError(f"--convert-prob must be a probability in [0, 1], got {args.convert_prob}")
    for stage in ("intra", "inter"):
        q = getattr(args, f"{stage}_threshold_quantile")
        if q is not None and not 0 < q < 1:
            raise ConfigError(f"--{stage}-threshold-quantile must lie in (0, 1), got {q}")
    for name in ("head_temperature",):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("margin", "mu0", "mu_power", "triplet_weight", "self_distill", "inter_lr_scale"):
        if not getattr(args, name) >= 0:  # also refuses NaN
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if len(set(args.stages)) != len(args.stages):
        raise ConfigError(f"--stages lists a stage twice: {args.stages}")


def check_data(args, dataset):
    """Cluster counts the training split cannot hold, found before any training."""
    n = len(dataset.train)
    if ("inter" in args.stages and args.inter_threshold_quantile is None and not args.oracle_clusters
            and not is_auto(args.inter_clusters)):
        if args.inter_clusters > n:
            raise ConfigError(f"--inter-clusters {args.inter_clusters} exceeds the {n} training images of "
                              f"{dataset.name}; choose at most {n}")
        if args.inter_clusters * args.num_instances < args.batch_size:
            raise ConfigError(f"--inter-clusters {args.inter_clusters} cannot fill batches of "
                              f"{args.batch_size // args.num_instances} identities (--batch-size {args.batch_size}, "
                              f"--num-instances {args.num_instances}); raise it or lower --batch-size")
    if "intra" in args.stages and args.intra_threshold_quantile is None and not is_auto(args.intra_clusters):
        largest = max(sum(r.camid == c for r in dataset.train) for c in {r.camid for r in dataset.train})
        if args.intra_clusters > largest:
            raise ConfigError(f"--intra-clusters {args.intra_clusters} exceeds the images of every camera "
                              f"(at most {largest} in {dataset.name}); choose at most {largest}")


def mu_at(round_index, *, mu0, rounds, power):
    """Jaccard weight of round r (0-based): ``mu_0 (1 - r / R) ** power`` (IICS Eq. 5 schedule)."""
    return mu0 * (1.0 - round_index / rounds) ** power


class Trainer:
    """One network (backbone + heads rebuilt every stage); a step is one stage of one round."""

    def __init__(self, ctx, args):
        self.ctx, self.opts, self.seed = ctx, Options.from_args(args), args.seed
        self.net = ctx.make_net()
        self.num_rounds = self.opts.rounds

    def start(self):
        return (0, 0)

    def done(self, position):
        return position[0] >= self.opts.rounds

    def step_seed(self, position):
        r, s = position
        return stage_seed(self.seed, r, self.opts.stages[s])

    def describe(self, position):
        return f"round {position[0] + 1}, stage {self.opts.stages[position[1]]}"

    def step(self, position):
        """Run stage ``s`` of round ``r``: returns (record fragment, next position, finished round or None)."""
        r, s = position
        stage, opts, ctx = self.opts.stages[s], self.opts, self.ctx
        seed, tag = stage_seed(self.seed, r, stage), f"round {r + 1}/{opts.rounds} {stage}"
        if stage == "intra":
            fragment = engine.run_intra_stage(self.net, ctx.dataset.train, ctx=ctx, opts=opts, seed=seed, desc=tag)
        else:
            n_clusters = ctx.dataset.num_train_pids if opts.oracle_clusters else opts.inter_clusters
            mu = mu_at(r, mu0=opts.mu0, rounds=opts.rounds, power=opts.mu_power)
            fragment = engine.run_inter_stage(self.net, ctx.dataset.train, ctx=ctx, opts=opts, mu=mu,
                                              n_clusters=n_clusters, seed=seed, desc=tag)
        if s + 1 == len(opts.stages):
            return fragment, (r + 1, 0), r + 1
        return fragment, (r, s + 1), None

    def state_dict(self):
        return {"model": self.net.state_dict(), "head_sizes": self.net.head_sizes()}

    def load_state_dict(self, state):
        self.net.set_heads(state["head_sizes"])
        self.net.load_state_dict(state["model"])

    def summary(self):
        return {"oracle_clusters": bool(self.opts.oracle_clusters)}
