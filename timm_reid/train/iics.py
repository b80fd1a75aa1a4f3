"""IICS (Xuan & Zhang, CVPR 2021), with the IIDS (TPAMI 2022) options: rounds of an intra-camera
stage and an inter-camera stage.

Intra stage (IICS Sec. 3.1): per camera, cluster the camera's images; one classifier head per
camera; each step takes one group of images from every camera and sums the cameras'
cross-entropies. Inter stage (IICS Sec. 3.2): cluster all images with
``1 - cos - mu * J * [cam_i != cam_j]``, J the weighted Jaccard similarity of the intra heads'
concatenated softmax scores; one head; cross-entropy + batch-hard triplet on P x K batches.
IIDS options: two augmented views, the second forwarded with TNorm style conversion with
probability ``convert_prob``, distilled from the first (soft cross-entropy, soft triplet).

Reading order: the options (:class:`Options`, shown in ``--help`` as "method iics"), their checks,
:class:`Trainer`, which the harness (:mod:`timm_reid.train.pipeline`) drives one stage at a
time (a checkpoint is written after every stage, at position ``(round, stage)``), then the two
stages (:func:`run_intra_stage`, :func:`run_inter_stage`) and their pieces.
"""

import argparse
import logging
import time
from dataclasses import dataclass, fields
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from timm_reid._run import progress as progress_bar
from timm_reid.cluster import (IntraCameraClusters, cluster_inter_camera, cluster_intra_camera,
                               estimate_camera_cluster_counts, estimate_num_clusters)
from timm_reid.data import CameraBatchSampler, ImageDataset, RandomIdentitySampler
from timm_reid.distributed import LOCAL
from timm_reid.train.auto_options import is_auto, number_or_auto
from timm_reid.train.checkpoint import stage_seed
from timm_reid.train.diagnostics import cluster_quality, label_stats
from timm_reid.train.errors import ConfigError
from timm_reid.train.losses import soft_cross_entropy, soft_triplet_loss, triplet_loss
from timm_reid.train.model import build_optimizer

NAME = "iics"
PRESETS = {"demo": "presets/demo.yaml", "iics": "presets/iics.yaml", "iids": "presets/iids.yaml"}
DEFAULT_PRESETS = ("demo", "iics")  # (without --dataset: synthetic data, with --dataset)
EVALUATION = "reid"
log = logging.getLogger("timm_reid.train")


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
    if args.convert_prob > 0 and not args.tnorm:
        raise ConfigError("--convert-prob > 0 needs TNorm layers: add --tnorm STAGE ...")
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
            fragment = run_intra_stage(self.net, ctx.dataset.train, ctx=ctx, opts=opts, seed=seed, desc=tag)
        else:
            n_clusters = ctx.dataset.num_train_pids if opts.oracle_clusters else opts.inter_clusters
            mu = mu_at(r, mu0=opts.mu0, rounds=opts.rounds, power=opts.mu_power)
            fragment = run_inter_stage(self.net, ctx.dataset.train, ctx=ctx, opts=opts, mu=mu,
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


# ------------------------------------------------------------------------------------------ the stages

class TwoViews:
    """Apply a random transform twice: the two augmented views of IIDS self-distillation."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


@torch.no_grad()
def head_scores(net, raw_features):
    """Concatenated softmax of all (per-camera) heads on the raw pooled features."""
    was_training = net.training
    net.eval()
    x = torch.as_tensor(raw_features, dtype=torch.float32, device=next(net.parameters()).device)
    scores = torch.cat([F.softmax(head(x), 1) for head in net.heads], 1)
    net.train(was_training)
    return scores.cpu().numpy()


def _clustering_target(n_clusters, threshold_quantile):
    if threshold_quantile is not None:
        return {"n_clusters": None, "threshold_quantile": threshold_quantile}
    return {"n_clusters": n_clusters, "threshold_quantile": None}


def _cluster_intra(feats, camids, *, opts, ctx):
    """Per-camera clustering; ``--intra-clusters auto``: each camera with its own estimated count
    (the threshold mode, when given, wins as it does over a fixed count)."""
    kw = dict(k1=ctx.k1, k2=ctx.k2, lambda_value=ctx.lambda_value, rerank=opts.rerank,
              drop_singletons=opts.drop_singletons)
    if not is_auto(opts.intra_clusters) or opts.intra_threshold_quantile is not None:
        return cluster_intra_camera(feats, camids, **kw,
                                    **_clustering_target(opts.intra_clusters, opts.intra_threshold_quantile))
    counts = estimate_camera_cluster_counts(feats, camids, k1=ctx.k1, k2=ctx.k2, lambda_value=ctx.lambda_value,
                                            rerank_distances=opts.rerank)
    log.info(f"intra clustering: auto counts per camera {list(counts.values())}")
    labels, found, offset = np.full(len(feats), -1, dtype=np.int64), {}, 0
    for cam, count in counts.items():
        m = camids == cam
        part = cluster_intra_camera(feats[m], camids[m], n_clusters=count, **kw)
        local = part.labels.numpy()
        labels[m] = np.where(local >= 0, local + offset, -1)
        found[cam] = part.counts[cam]
        offset += found[cam]
    return IntraCameraClusters(torch.from_numpy(labels), found)


def inter_cluster_count(feats, *, opts, ctx, n_clusters):
    """``n_clusters``, or with ``--inter-clusters auto`` the estimated count (at least enough
    clusters to fill a P x K batch)."""
    if not is_auto(n_clusters) or opts.inter_threshold_quantile is not None:
        return n_clusters
    count = estimate_num_clusters(feats, k1=ctx.k1, k2=ctx.k2, lambda_value=ctx.lambda_value,
                                  rerank_distances=opts.rerank)
    count = min(max(count, ctx.batch_size // ctx.num_instances), len(feats))
    log.info(f"inter clustering: auto count {count}")
    return count


# ------------------------------------------------------------------------------------------------ intra

def _optimizer(net, optim, lr):
    return build_optimizer(net, opt=optim.opt, lr=lr, backbone_lr_mult=optim.backbone_lr_mult,
                           weight_decay=optim.weight_decay, momentum=optim.momentum)


def run_intra_stage(net, train, *, ctx, opts, seed, desc="intra"):
    """Cluster each camera, build per-camera heads, train ``opts.intra_epochs``; returns a record
    of the stage. ``ctx``: the harness :class:`~timm_reid.train.context.Context`; ``opts``: the
    :class:`~timm_reid.train.iics.Options`; ``seed``: the stage's seed (batch sampling)."""
    t0 = time.time()
    raw, feats, pids, camids = ctx.clustering_features(net, train)
    t1 = time.time()
    result = ctx.dist.on_main(_cluster_intra, feats, camids, opts=opts, ctx=ctx)
    labels = result.labels.numpy()
    sizes = [result.counts.get(c, 0) for c in range(ctx.num_cameras)]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    net.set_heads(sizes)
    if opts.head_init == "centroid":
        for c, head in enumerate(net.heads):
            m = (camids == c) & (labels >= 0)
            if m.any():
                head.init_from_centroids(raw[m], labels[m] - offsets[c], opts.head_temperature)
    record = {"intra_clusters": sizes, **intra_quality(labels, pids, camids)}
    t2 = time.time()

    keep = labels >= 0
    recs = [r._replace(pid=int(lab - offsets[r.camid])) for r, lab, k in zip(train, labels, keep) if k]
    loader = intra_loader(recs, TwoViews(ctx.train_tf) if opts.self_distill > 0 else ctx.train_tf,
                          images_per_camera=opts.intra_batch_size, workers=ctx.workers, seed=seed)
    optimizer = _optimizer(net, ctx.optim, ctx.optim.lr)
    losses = []
    for epoch in range(opts.intra_epochs):
        loader.batch_sampler.set_epoch(epoch)
        losses.append(train_intra_epoch(net, loader, optimizer, joint_forward=opts.intra_joint_forward,
                                        self_distill=opts.self_distill, convert_prob=opts.convert_prob,
                                        progress=ctx.progress, desc=f"{desc} epoch {epoch + 1}/{opts.intra_epochs}",
                                        dist=ctx.dist))
    record["intra_loss"] = float(np.mean(losses)) if losses else None
    record["intra_seconds"] = {"features": round(t1 - t0, 1), "cluster": round(t2 - t1, 1),
                               "train": round(time.time() - t2, 1)}
    return record


def intra_loader(records, transform, *, images_per_camera, workers, seed):
    """Batches holding ``images_per_camera`` images of every camera (fewer when a camera has fewer
    labelled images), cameras in increasing order."""
    camids = [r.camid for r in records]
    smallest = min(np.bincount(camids)[np.unique(camids)])
    sampler = CameraBatchSampler(camids, images_per_camera=min(images_per_camera, int(smallest)), seed=seed)
    return DataLoader(ImageDataset(records, transform), batch_sampler=sampler, num_workers=workers)


def intra_quality(labels, pids, camids):
    """Mean over cameras of NMI / ARI / purity against the true identities, and singletons."""
    out = {"intra_singletons": 0}
    scores = {"nmi": [], "ari": [], "purity": []}
    for c in np.unique(camids):
        m = camids == c
        out["intra_singletons"] += label_stats(labels[m])["singletons"]
        for k, v in cluster_quality(pids[m], labels[m]).items():
            scores[k].append(v)
    out.update({f"intra_{k}": float(np.mean(v)) for k, v in scores.items() if v})
    out["intra_dropped"] = int((labels < 0).sum())
    return out


def train_intra_epoch(net, loader, optimizer, *, joint_forward, self_distill, convert_prob, progress, desc,
                      dist=LOCAL):
    """One pass over camera-grouped batches; the loss is the sum over cameras of each camera head's
    cross-entropy on that camera's images (reference ``IntraCameraTrainer``). Cameras are forwarded
    one by one (reference), or in one forward with ``joint_forward`` (identical unless the backbone
    couples samples across cameras, as AIBN's batch statistics do). Under torchrun each forward is
    shared by the processes (:meth:`Dist.forward`). Returns the mean loss."""
    device = next(net.parameters()).device
    net.train()
    total, steps = 0.0, 0
    bar = progress_bar(loader, desc=desc, enabled=progress)
    for images, labels, camids, _ in bar:
        labels, camids = labels.to(device), camids.to(device)
        views = [v.to(device) for v in images] if self_distill > 0 else [images.to(device)]
        convert = self_distill > 0 and bool(torch.rand(()) < convert_prob)
        feats = [_forward_by_camera(net, v, camids, joint_forward, convert=(i == 1 and convert), dist=dist)
                 for i, v in enumerate(views)]
        loss = 0.0
        for c in torch.unique(camids).tolist():
            m = camids == c
            logits = net.heads[c](feats[0][m])
            loss = loss + F.cross_entropy(logits, labels[m])
            if self_distill > 0:
                loss = loss + self_distill * soft_cross_entropy(net.heads[c](feats[1][m]), logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(net)
        optimizer.step()
        total, steps = total + loss.item(), steps + 1
        bar.set_postfix(loss=f"{total / steps:.3f}")
    return total / max(steps, 1)


def _forward_by_camera(net, images, camids, joint, convert=False, dist=LOCAL):
    """Pooled features of a camera-grouped batch: one forward per camera, or one for all."""
    if joint:
        return dist.forward(net, images, camids=camids, convert=convert)
    order = torch.argsort(camids, stable=True)
    parts = [dist.forward(net, images[idx], camids=camids[idx], convert=convert)
             for idx in torch.split(order, torch.bincount(camids[order]).tolist()) if len(idx)]
    return torch.cat(parts)[torch.argsort(order)]


# ------------------------------------------------------------------------------------------------ inter

def run_inter_stage(net, train, *, ctx, opts, mu, n_clusters, seed, desc="inter"):
    """Cluster all images across cameras, build one head, train ``opts.inter_epochs``; returns a
    stage record. ``mu``: this round's Jaccard weight; ``n_clusters``: the cluster count.

    The Jaccard term needs the per-camera heads of an intra stage just run; without them (e.g.
    ``--stages inter``) it is off and ``inter_mu`` is recorded as 0.
    """
    t0 = time.time()
    raw, feats, pids, camids = ctx.clustering_features(net, train)
    t1 = time.time()
    use_jaccard = mu > 0 and len(net.heads) == ctx.num_cameras and ctx.num_cameras > 1
    scores = head_scores(net, raw) if use_jaccard else np.zeros((len(raw), 1), np.float32)
    n_clusters = ctx.dist.on_main(inter_cluster_count, feats, opts=opts, ctx=ctx, n_clusters=n_clusters)
    labels = ctx.dist.on_main(cluster_inter_camera, feats, scores, camids, mu=mu if use_jaccard else 0.0,
                              k1=ctx.k1, k2=ctx.k2, lambda_value=ctx.lambda_value, rerank=opts.rerank,
                              drop_singletons=opts.drop_singletons,
                              **_clustering_target(n_clusters, opts.inter_threshold_quantile)).numpy()
    record = {"inter_mu": mu if use_jaccard else 0.0, "inter_target_clusters": n_clusters,
              **{f"inter_{k}": v for k, v in label_stats(labels, camids).items()},
              **{f"inter_{k}": v for k, v in cluster_quality(pids, labels).items()}}
    num_classes = int(labels.max()) + 1 if (labels >= 0).any() else 0
    if num_classes * ctx.num_instances < ctx.batch_size:
        raise RuntimeError(f"inter-camera clustering gave {num_classes} clusters, too few for batches of "
                           f"{ctx.batch_size // ctx.num_instances} identities; lower --inter-threshold-quantile, "
                           "raise --inter-clusters or lower --batch-size")
    net.set_heads([num_classes])
    if opts.head_init == "centroid":
        net.heads[0].init_from_centroids(raw[labels >= 0], labels[labels >= 0], opts.head_temperature)
    t2 = time.time()

    recs = [r._replace(pid=int(lab)) for r, lab in zip(train, labels) if lab >= 0]
    sampler = RandomIdentitySampler([r.pid for r in recs], num_instances=ctx.num_instances,
                                    batch_size=ctx.batch_size, seed=seed)
    transform = TwoViews(ctx.train_tf) if opts.self_distill > 0 else ctx.train_tf
    loader = DataLoader(ImageDataset(recs, transform), batch_size=ctx.batch_size, sampler=sampler,
                        num_workers=ctx.workers, drop_last=True)
    optimizer = _optimizer(net, ctx.optim, ctx.optim.lr * opts.inter_lr_scale)
    ce, tri = [], []
    for epoch in range(opts.inter_epochs):
        sampler.set_epoch(epoch)
        c, t = train_inter_epoch(net, loader, optimizer, margin=opts.margin, triplet_weight=opts.triplet_weight,
                                 self_distill=opts.self_distill, convert_prob=opts.convert_prob,
                                 progress=ctx.progress, desc=f"{desc} epoch {epoch + 1}/{opts.inter_epochs}",
                                 dist=ctx.dist)
        ce.append(c)
        tri.append(t)
    record["inter_ce_loss"] = float(np.mean(ce)) if ce else None
    record["inter_triplet_loss"] = float(np.mean(tri)) if tri else None
    record["inter_seconds"] = {"features": round(t1 - t0, 1), "cluster": round(t2 - t1, 1),
                               "train": round(time.time() - t2, 1)}
    return record


def train_inter_epoch(net, loader, optimizer, *, margin, triplet_weight, self_distill, convert_prob, progress,
                      desc, dist=LOCAL):
    """One pass over P x K batches: cross-entropy of the head + batch-hard triplet on pooled
    features (reference ``InterCameraTrainer``). Returns mean (cross-entropy, triplet) losses."""
    device = next(net.parameters()).device
    net.train()
    head = net.heads[0]
    ce_sum, tri_sum, steps = 0.0, 0.0, 0
    bar = progress_bar(loader, desc=desc, enabled=progress)
    for images, labels, camids, _ in bar:
        labels, camids = labels.to(device), camids.to(device)
        view1 = (images[0] if self_distill > 0 else images).to(device)
        f1 = dist.forward(net, view1, camids=camids)
        logits1 = head(f1)
        ce = F.cross_entropy(logits1, labels)
        tri = triplet_loss(f1, labels, margin=margin)
        loss = ce + triplet_weight * tri
        if self_distill > 0:
            convert = bool(torch.rand(()) < convert_prob)
            f2 = dist.forward(net, images[1].to(device), camids=camids, convert=convert)
            loss = loss + self_distill * (soft_cross_entropy(head(f2), logits1) + soft_triplet_loss(f2, f1, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(net)
        optimizer.step()
        ce_sum, tri_sum, steps = ce_sum + ce.item(), tri_sum + tri.item(), steps + 1
        bar.set_postfix(ce=f"{ce_sum / steps:.3f}", tri=f"{tri_sum / steps:.3f}")
    return ce_sum / max(steps, 1), tri_sum / max(steps, 1)
