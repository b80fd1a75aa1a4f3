"""ICE (Chen, Lagadec & Bremond, ICCV 2021): camera-aware proxies, hard instance contrast and soft
instance consistency, with an online and a momentum encoder.

Reading order: the options (:class:`Options`, "method ice" in ``--help``), their checks, the
momentum-encoder rule (:func:`ema_update`), the proxies (:func:`build_proxies`), and
:class:`Trainer`: every epoch (``--iters`` iterations, the reference's ``relabel_every``) it
clusters the momentum encoder's train features (k-reciprocal Jaccard distance + DBSCAN, outliers
left out until the next clustering), builds the proxies and trains on P x K batches of the
clustered images. Inference and clustering use the momentum encoder.

Choices where the paper is silent (following chenhao2345/ICE unless said):
- proxies are fixed during an epoch (computed after clustering, never updated by the batches);
- cluster proxies are means of L2-normalised momentum features (not re-normalised), camera
  proxies the L2-normalised means per (cluster, camera);
- the cross-camera loss is averaged over each camera's batch samples and summed over cameras;
- the soft consistency compares the online encoder's similarities (augmented view 1 vs the
  momentum encoder's augmented view 2) with the momentum encoder's on the un-augmented view;
- features are the backbone's pooled features, L2-normalised in every loss (the reference
  adds a BN-neck; here the trained backbone alone gives the evaluation features, so that
  ``backbone.safetensors`` reproduces them);
- momentum-encoder buffers (BN/AIBN running statistics, TNorm per-camera statistics) are not
  averaged: the momentum encoder runs in train mode with the batch's camera ids, so its own
  forwards keep its statistics, as the reference does for BN;
- batches come from ``RandomIdentitySampler`` (the reference prefers several cameras per identity);
  the learning rate warms up linearly from 0.1 x over ``--warmup-epochs`` epochs.
"""

import logging
import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader

from timm_reid._run import derive_seed, progress
from timm_reid.cluster import dbscan_auto, dbscan_jaccard
from timm_reid.data import ImageDataset, RandomIdentitySampler
from timm_reid.data.samplers import infinite_batches
from timm_reid.train.auto_options import is_auto, number_or_auto
from timm_reid.train.diagnostics import cluster_quality, label_stats
from timm_reid.train.errors import ConfigError
from timm_reid.train.features import l2_normalize
from timm_reid.train.losses import (hard_instance_loss, proxy_agnostic_loss, proxy_cross_camera_loss,
                                    soft_consistency_loss)
from timm_reid.train.model import build_optimizer
from timm_reid.train.protocol import EpochSchedule

NAME = "ice"
PRESETS = {"ice-demo": "presets/ice-demo.yaml", "ice": "presets/ice.yaml"}
DEFAULT_PRESETS = ("ice-demo", "ice")  # (without --dataset: synthetic data, with --dataset)
EVALUATION = "reid"
log = logging.getLogger("timm_reid.train")


@dataclass(frozen=True)
class Options:
    epochs: int
    iters: int
    warmup_epochs: int
    ema: float
    eps: object  # float, or "auto"
    min_samples: int
    memory: str
    tau_agnostic: float
    label_smoothing: float
    cross_weight: float
    tau_cross: float
    num_negatives: int
    tau_hard: float
    hard_weight: float
    tau_soft: float
    soft_weight: float

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def add_arguments(parser):
    g = parser.add_argument_group("method ice", "ICE: proxies and instance contrast with a momentum encoder "
                                                "(--method ice; presets ice, ice-demo)")
    g.add_argument("--epochs", default=40, type=int, help="epochs; each clusters once, then trains --iters steps")
    g.add_argument("--iters", default=400, type=int, help="iterations per epoch (between two clusterings)")
    g.add_argument("--warmup-epochs", default=10, type=int, help="linear lr warm-up from 0.1 x lr over these epochs")
    g.add_argument("--ema", default=0.999, type=float, help="momentum encoder: m = ema * m + (1 - ema) * online")
    g.add_argument("--eps", default=0.55, type=number_or_auto(float),
                   help="DBSCAN eps on the Jaccard distance, or auto: found at every clustering from the distances "
                        "(the eps with the most clusters among those leaving at most 30 %% outliers; "
                        "timm_reid.cluster.dbscan_auto)")
    g.add_argument("--min-samples", default=4, type=int, help="DBSCAN min samples")
    g.add_argument("--memory", default="aware", choices=("aware", "agnostic"),
                   help="proxy memory: cluster proxies + camera proxies (aware) or cluster proxies only")
    g.add_argument("--tau-agnostic", default=0.5, type=float, help="temperature of the cluster-proxy loss")
    g.add_argument("--label-smoothing", default=0.1, type=float, help="label smoothing of the cluster-proxy loss")
    g.add_argument("--cross-weight", default=0.5, type=float, help="weight of the camera-proxy loss")
    g.add_argument("--tau-cross", default=0.07, type=float, help="temperature of the camera-proxy loss")
    g.add_argument("--num-negatives", default=50, type=int, help="hardest negative camera proxies per sample")
    g.add_argument("--tau-hard", default=0.1, type=float, help="temperature of the hard instance contrast")
    g.add_argument("--hard-weight", default=1.0, type=float, help="weight of the hard instance contrast")
    g.add_argument("--tau-soft", default=0.4, type=float, help="temperature of the soft instance consistency")
    g.add_argument("--soft-weight", default=10.0, type=float, help="weight of the soft instance consistency")


def check(args):
    for name in ("epochs", "iters", "min_samples", "num_negatives"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_epochs < 0:
        raise ConfigError(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    if not 0 <= args.ema < 1:
        raise ConfigError(f"--ema must lie in [0, 1), got {args.ema}")
    if not 0 <= args.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing must lie in [0, 1), got {args.label_smoothing}")
    if not is_auto(args.eps) and not (isinstance(args.eps, (int, float)) and math.isfinite(args.eps) and args.eps > 0):
        raise ConfigError(f"--eps must be auto or a finite number > 0, got {args.eps}")
    for name in ("tau_agnostic", "tau_cross", "tau_hard", "tau_soft"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    for name in ("cross_weight", "hard_weight", "soft_weight"):
        if not getattr(args, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


def check_data(args, dataset):
    n = len(dataset.train)
    if args.min_samples > n:
        raise ConfigError(f"--min-samples {args.min_samples} exceeds the {n} training images of {dataset.name}")
    if args.k1 >= n:
        raise ConfigError(f"--k1 {args.k1} needs more than {args.k1} training images; {dataset.name} has {n}")


# ------------------------------------------------------------------------------------------ pieces

@torch.no_grad()
def ema_update(momentum, online, alpha):
    """``m <- alpha * m + (1 - alpha) * o`` for every parameter; buffers are left to the momentum
    encoder's own forwards (see the module docstring)."""
    for m, o in zip(momentum.parameters(), online.parameters()):
        m.mul_(alpha).add_(o.detach(), alpha=1.0 - alpha)


def build_proxies(features, labels, camids):
    """Cluster proxies (K, D): mean feature of each cluster ``0..K-1``; camera proxies (M, D): the
    L2-normalised mean of each (cluster, camera) pair present, with their cluster labels (M,).
    Samples labelled -1 (outliers) are left out."""
    keep = labels >= 0
    f, y, c = features[keep], labels[keep], camids[keep]
    k = int(labels.max()) + 1
    centers = np.stack([f[y == j].mean(0) for j in range(k)])
    pairs = np.unique(np.stack([y, c], 1), axis=0)  # sorted by cluster, then camera
    cam_proxies = np.stack([f[(y == j) & (c == cc)].mean(0) for j, cc in pairs])
    return (torch.as_tensor(centers, dtype=torch.float32), torch.as_tensor(l2_normalize(cam_proxies), dtype=torch.float32),
            torch.as_tensor(pairs[:, 0], dtype=torch.long))


class ThreeViews:
    """(augmented, un-augmented, augmented) views of an image: the inputs of one ICE step."""

    def __init__(self, train_transform, test_transform):
        self.train_transform, self.test_transform = train_transform, test_transform

    def __call__(self, img):
        return self.train_transform(img), self.test_transform(img), self.train_transform(img)


def epoch_seed(seed, epoch):
    return derive_seed(seed, ((epoch, 131),), salt=11)


def warmup_factor(epoch, warmup_epochs):
    """Reference ``WarmupMultiStepLR`` (factor 0.1, linear, stepped per epoch, no decay)."""
    if epoch >= warmup_epochs:
        return 1.0
    alpha = epoch / warmup_epochs
    return 0.1 * (1 - alpha) + alpha


class Trainer(EpochSchedule):
    """Online and momentum encoders; a step is one epoch (clustering + ``--iters`` iterations)."""

    def __init__(self, ctx, args):
        self.ctx, self.opts, self.seed = ctx, Options.from_args(args), args.seed
        self.online = ctx.make_net()
        self.net = ctx.dist.copy_module(self.online)  # the momentum encoder: evaluated, clusters, saved
        self.net.requires_grad_(False)
        o = ctx.optim
        self.optimizer = build_optimizer(self.online, opt=o.opt, lr=o.lr, backbone_lr_mult=o.backbone_lr_mult,
                                         weight_decay=o.weight_decay, momentum=o.momentum)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.num_rounds = self.opts.epochs

    def step_seed(self, position):
        return epoch_seed(self.seed, position[0])

    def step(self, position):
        epoch = position[0]
        t0 = time.time()
        labels, record = self.cluster()
        t1 = time.time()
        record.update(self.train_epoch(epoch, labels))
        record["ice_seconds"] = {"cluster": round(t1 - t0, 1), "train": round(time.time() - t1, 1)}
        return record, (epoch + 1, 0), epoch + 1

    def cluster(self):
        """Pseudo labels of the train split from the momentum encoder, and their statistics."""
        ctx, opts = self.ctx, self.opts
        raw, feats, pids, camids = ctx.clustering_features(self.net)
        labels, chosen = ctx.dist.on_main(self._dbscan, feats)
        self._features, self._camids = l2_normalize(raw), camids
        record = {**chosen, **{f"ice_{k}": v for k, v in label_stats(labels, camids).items()},
                  "ice_outliers": int((labels < 0).sum()),
                  **{f"ice_{k}": v for k, v in cluster_quality(pids, labels).items()}}
        return labels, record

    def _dbscan(self, feats):
        """Labels and the settings used (recorded): ``--eps auto`` finds eps from the distances."""
        opts, ctx = self.opts, self.ctx
        if not is_auto(opts.eps):
            labels = dbscan_jaccard(feats, eps=opts.eps, min_samples=opts.min_samples, k1=ctx.k1, k2=ctx.k2)
            return labels, {"ice_eps": opts.eps}
        try:
            labels, choice = dbscan_auto(feats, min_samples=opts.min_samples, k1=ctx.k1, k2=ctx.k2,
                                         min_clusters=ctx.batch_size // ctx.num_instances)
        except ValueError as e:
            raise RuntimeError(f"--eps auto: {e}") from None
        log.info(f"clustering: {choice.describe()}")
        return labels, {"ice_eps": choice.eps, "ice_eps_reason": choice.reason}

    def train_epoch(self, epoch, labels):
        ctx, opts = self.ctx, self.opts
        num_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
        if num_clusters < ctx.batch_size // ctx.num_instances:
            raise RuntimeError(f"DBSCAN found {num_clusters} clusters, too few for batches of "
                               f"{ctx.batch_size // ctx.num_instances} identities; raise --eps, lower "
                               "--min-samples or lower --batch-size")
        centers, cam_proxies, proxy_labels = (t.to(ctx.device) for t in build_proxies(self._features, labels, self._camids))
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * warmup_factor(epoch, opts.warmup_epochs)
        recs = [r._replace(pid=int(lab)) for r, lab in zip(ctx.dataset.train, labels) if lab >= 0]
        sampler = RandomIdentitySampler([r.pid for r in recs], num_instances=ctx.num_instances,
                                        batch_size=ctx.batch_size, seed=epoch_seed(self.seed, epoch))
        loader = DataLoader(ImageDataset(recs, ThreeViews(ctx.train_tf, ctx.test_tf)), batch_size=ctx.batch_size,
                            sampler=sampler, num_workers=ctx.workers, drop_last=True)
        sums = {}
        batches = infinite_batches(loader, sampler)
        bar = progress(range(opts.iters), desc=f"ice epoch {epoch + 1}/{opts.epochs}", enabled=ctx.progress)
        for i in bar:
            images, targets, camids, _ = next(batches)
            losses = self.train_step(images, targets.to(ctx.device), camids.to(ctx.device),
                                     centers, cam_proxies, proxy_labels)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        return {f"ice_{k}": v / opts.iters for k, v in sums.items()} | {"ice_clusters_trained": num_clusters}

    def train_step(self, images, targets, camids, centers, cam_proxies, proxy_labels):
        """One ICE iteration: the losses of the online encoder, an optimizer step, the EMA update."""
        opts, device, dist = self.opts, self.ctx.device, self.ctx.dist
        strong, weak, strong2 = (v.to(device) for v in images)
        self.online.train()
        self.net.train()
        f = torch.nn.functional.normalize(dist.forward(self.online, strong, camids=camids), dim=1)
        with torch.no_grad():
            m2 = torch.nn.functional.normalize(dist.forward(self.net, strong2, camids=camids), dim=1)
            mw = torch.nn.functional.normalize(dist.forward(self.net, weak, camids=camids), dim=1)
        parts = {"agnostic": proxy_agnostic_loss(f, centers, targets, tau=opts.tau_agnostic,
                                                 label_smoothing=opts.label_smoothing)}
        if opts.memory == "aware":
            parts["cross"] = opts.cross_weight * proxy_cross_camera_loss(
                f, targets, camids, cam_proxies, proxy_labels, tau=opts.tau_cross, num_negatives=opts.num_negatives)
        parts["hard"] = opts.hard_weight * hard_instance_loss(f, m2, targets, tau=opts.tau_hard)
        parts["soft"] = opts.soft_weight * soft_consistency_loss(f, m2, mw, tau=opts.tau_soft)
        loss = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(self.online)
        self.optimizer.step()
        ema_update(self.net, self.online, opts.ema)
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def state_dict(self):
        return {"model": self.net.state_dict(), "head_sizes": [], "online": self.online.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["model"])
        self.online.load_state_dict(state["online"])
        self.optimizer.load_state_dict(state["optimizer"])

    def summary(self):
        return {}
