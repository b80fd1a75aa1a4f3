"""GUR (Yang, Chen, Ye, ICCV 2023): grand unified representation learning for unsupervised
visible-infrared ReID, as a method of the shared harness (``--method gur``).

Reading order: the options (:class:`Options`, "method gur" in ``--help``), their checks, and
:class:`Trainer`. The network is the run's backbone made dual-stream
(:func:`timm_reid.models.dual_stream`: modality-specific stem, and stages ``1..--specific-stages``,
routed by camera id; shared deeper layers). A step is one epoch of the bottom-up schedule:

1. **intra-camera** (``--bottom-up``): the train features of each camera are clustered on their
   own (DBSCAN on the Jaccard distance, ``--camera-eps``); one memory block per camera;
   ``--camera-iters`` ADC iterations, each sample against its camera's block.
2. **inter-camera** (always): each modality is clustered on its own, on the cross-memory
   association embedding (CAE, ``--cae``: association probabilities to every camera memory of
   that modality, temperature ``--sigma``) or on the features; one block per modality;
   ``--modality-iters`` iterations. In the last ``--clu-epochs`` epochs, cross-modality label
   unification (CLU) relabels the visible samples in the infrared label space
   (:func:`timm_reid.cluster.unify_labels`: top-``--clu-k`` heterogeneous vote, and in the last
   ``--clu-smooth-epochs`` also the homogeneous smoothing), and both modalities then train against
   the infrared memory.
3. **inter-modality** (``--bottom-up``; skipped in the smoothing epochs, as the reference code):
   all samples clustered together on the CAE against the two modality memories (or on the
   features); one shared block; ``--joint-iters`` iterations.

Without ``--bottom-up`` (the ablation's baseline) only stage 2 runs on features: ADC with two
modality memories and no cross-modality association.

ADC (:mod:`timm_reid.train.gur_parts`): memories of L2-normalised cluster centroids, updated with
momentum ``--memory-momentum`` by every sample; ClusterNCE at temperature ``--temp``; the loss is
the infrared mean plus the visible mean; the visible samples add a channel-augmented view
(``--channel-aug``, the augmented stream) with the same targets.

Choices where the paper is silent (following yangbincv/GUR unless said):
- the reference trains intra-camera on one (visible camera, infrared camera) pair at a time; here
  each batch mixes cameras and each sample meets its own camera's block only (the same loss
  terms, one loader, any number of cameras of each modality);
- batches are P x K over the stage's pseudo identities (``RandomIdentitySampler``), modalities
  mixed in proportion (the reference draws one loader per modality);
- clustering runs on L2-normalised features or L2-normalised CAE embeddings (cosine Jaccard);
  memories start from L2-normalised feature centroids; stages whose clustering gives fewer
  pseudo identities than a batch needs are skipped (recorded as ``gur_<stage>_skipped``);
- CAE of stage 3 uses the visible centroids of stage 2 as they were clustered when CLU trained
  the visible samples against the infrared memory (the reference does the same);
- the learning rate drops by 10 every ``--lr-step`` epochs (paper: 20; 0 = never).
"""

import argparse
import logging
import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from timm_reid._run import derive_seed, progress
from timm_reid.cluster import association_embedding, dbscan_auto, dbscan_jaccard, unify_labels
from timm_reid.cluster.association import HOMOGENEOUS_VOTES
from timm_reid.data import RandomIdentitySampler
from timm_reid.data.image_dataset import read_image
from timm_reid.data.layouts import INFRARED, VISIBLE, modality_of
from timm_reid.data.samplers import infinite_batches
from timm_reid.models.dual_stream import dual_stream
from timm_reid.train.auto_options import is_auto, number_or_auto
from timm_reid.train.diagnostics import cluster_quality
from timm_reid.train.errors import ConfigError
from timm_reid.train.features import l2_normalize
from timm_reid.train.gur_parts import ChannelExchange, DomainMemory, centroids, modality_loss
from timm_reid.train.model import build_optimizer
from timm_reid.train.protocol import EpochSchedule

NAME = "gur"
EVALUATION = "sysumm01"
PRESETS = {"gur-demo": "presets/gur-demo.yaml", "gur": "presets/gur.yaml"}
# (without --dataset, with --dataset). GUR always needs --dataset sysumm01; its default is the demo, which runs
# offline on the synthetic VI data; the paper preset (ImageNet ResNet-50: a download) is --preset gur.
DEFAULT_PRESETS = ("gur-demo", "gur-demo")
STAGES = ("camera", "modality", "joint")
log = logging.getLogger("timm_reid.train")


@dataclass(frozen=True)
class Options:
    epochs: int
    camera_iters: int
    modality_iters: int
    joint_iters: int
    bottom_up: bool
    cae: bool
    clu_epochs: int
    clu_smooth_epochs: int
    clu_k: int
    clu_vote: str
    sigma: float
    temp: float
    memory_momentum: float
    channel_aug: bool
    channel_gray: bool
    specific_stages: int
    camera_eps: object  # float or "auto"
    modality_eps: object
    joint_eps: object
    camera_min_samples: int
    min_samples: int
    lr_step: int

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def add_arguments(parser):
    g = parser.add_argument_group("method gur", "GUR: bottom-up intra-camera / inter-camera / inter-modality ADC "
                                                "on a dual-stream backbone, visible-infrared data "
                                                "(--method gur; presets gur, gur-demo)")
    bool_flag = dict(action=argparse.BooleanOptionalAction)
    eps = number_or_auto(float)
    g.add_argument("--epochs", default=50, type=int, help="epochs; each runs the bottom-up stages once")
    g.add_argument("--camera-iters", default=100, type=int, help="ADC iterations of the intra-camera stage per epoch")
    g.add_argument("--modality-iters", default=200, type=int,
                   help="ADC iterations of the inter-camera (within each modality) stage per epoch")
    g.add_argument("--joint-iters", default=200, type=int, help="ADC iterations of the inter-modality stage per epoch")
    g.add_argument("--bottom-up", default=True, **bool_flag,
                   help="bottom-up domain learning (BD): intra-camera and inter-modality stages around the "
                        "inter-camera one; --no-bottom-up: the ADC baseline (stage 2 only)")
    g.add_argument("--cae", default=True, **bool_flag,
                   help="cluster the cross-memory association embedding (CAE) instead of the features")
    g.add_argument("--clu-epochs", default=20, type=int,
                   help="cross-modality label unification (CLU) in the last N epochs (0: off)")
    g.add_argument("--clu-smooth-epochs", default=10, type=int,
                   help="CLU's homogeneous smoothing in the last N epochs (<= --clu-epochs); the inter-modality "
                        "stage is skipped in them (as the reference code)")
    g.add_argument("--clu-k", default=20, type=int, help="CLU: neighbours of the top-k votes")
    g.add_argument("--clu-vote", default="uniform", choices=HOMOGENEOUS_VOTES,
                   help="CLU smoothing weights: uniform (the code) or softmax similarity (paper Eq. 12)")
    g.add_argument("--sigma", default=0.05, type=float, help="CAE temperature (paper Eq. 6)")
    g.add_argument("--temp", default=0.05, type=float, help="ClusterNCE temperature of the memories")
    g.add_argument("--memory-momentum", default=0.2, type=float,
                   help="memory update: m <- normalize(momentum * m + (1 - momentum) * feature)")
    g.add_argument("--channel-aug", default=True, **bool_flag,
                   help="visible samples add a channel-exchanged view (ADC's augmented stream)")
    g.add_argument("--channel-gray", default=False, **bool_flag,
                   help="channel augmentation also draws a grayscale view (1 in 4) besides R, G or B")
    g.add_argument("--specific-stages", default=0, type=int,
                   help="dual-stream split: the stem and stages 1..N are modality-specific (0: the stem only)")
    g.add_argument("--camera-eps", default=0.55, type=eps, help="DBSCAN eps of the intra-camera stage, or auto")
    g.add_argument("--modality-eps", default=0.6, type=eps, help="DBSCAN eps of the inter-camera stage, or auto")
    g.add_argument("--joint-eps", default=0.6, type=eps, help="DBSCAN eps of the inter-modality stage, or auto")
    g.add_argument("--camera-min-samples", default=4, type=int, help="DBSCAN min samples within one camera")
    g.add_argument("--min-samples", default=4, type=int,
                   help="DBSCAN min samples of the inter-camera and inter-modality stages")
    g.add_argument("--lr-step", default=20, type=int, help="learning rate / 10 every N epochs (0: constant)")


def check(args):
    if args.dataset in (None, "synthetic"):
        raise ConfigError("--method gur needs visible-infrared data (the built-in synthetic data is single-modality): "
                          "pass --dataset sysumm01 --root DIR, e.g. DIR written by `python -m timm_reid.data.synthetic "
                          "--out DIR --modality vi`, or --dataset regdb --root DIR [--trial T]")
    for name in ("epochs", "clu_k", "camera_min_samples", "min_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("camera_iters", "modality_iters", "joint_iters", "clu_epochs", "clu_smooth_epochs", "lr_step",
                 "specific_stages"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.clu_smooth_epochs > args.clu_epochs:
        raise ConfigError(f"--clu-smooth-epochs {args.clu_smooth_epochs} exceeds --clu-epochs {args.clu_epochs}: "
                          "smoothing is part of CLU; raise --clu-epochs or lower --clu-smooth-epochs")
    if args.clu_epochs > args.epochs:
        raise ConfigError(f"--clu-epochs {args.clu_epochs} exceeds --epochs {args.epochs}")
    for name in ("sigma", "temp"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ConfigError(f"--{name} must be a finite number > 0, got {getattr(args, name)}")
    if not 0 <= args.memory_momentum < 1:
        raise ConfigError(f"--memory-momentum must lie in [0, 1), got {args.memory_momentum}")
    for name in ("camera_eps", "modality_eps", "joint_eps"):
        value = getattr(args, name)
        if not is_auto(value) and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be auto or a finite number > 0, got {value}")
    if args.modality_iters == 0 and (not args.bottom_up or args.camera_iters + args.joint_iters == 0):
        raise ConfigError("every GUR stage has 0 iterations: set --modality-iters (and --camera-iters / "
                          "--joint-iters with --bottom-up) above 0")


def infrared_cameras(dataset):
    """Sorted camera ids whose records are infrared (records carry their modality)."""
    records = list(dataset.train) + list(dataset.query) + list(dataset.gallery)
    return sorted({r.camid for r in records if modality_of(r) == INFRARED})


def check_data(args, dataset):
    where = f"--method gur on {dataset.name}"
    infrared = set(infrared_cameras(dataset))
    train_modalities = {modality_of(r) for r in dataset.train}
    if not infrared or train_modalities != {VISIBLE, INFRARED}:
        raise ConfigError(f"{where}: GUR needs visible-infrared data whose training split has both modalities "
                          "(records carrying their modality): use --dataset sysumm01 or regdb --root DIR, e.g. "
                          "data written by `python -m timm_reid.data.synthetic --out DIR --modality vi`")
    both = {r.camid for r in dataset.train if modality_of(r) == VISIBLE} & infrared
    if both:
        raise ConfigError(f"{where}: camera(s) {sorted(both)} hold visible and infrared images; each camera "
                          "must record one modality (the dual-stream backbone routes by camera)")
    n = min(sum(modality_of(r) == m for r in dataset.train) for m in (VISIBLE, INFRARED))
    if args.min_samples > n:
        raise ConfigError(f"--min-samples {args.min_samples} exceeds the {n} training images of the "
                          f"smaller modality of {dataset.name}")


# ------------------------------------------------------------------------------------------ data

class _Views(Dataset):
    """Items ``(view, augmented view, target row, camid, modality)``: the augmented view is the
    channel-exchanged training view for visible images, the view itself for infrared ones."""

    def __init__(self, records, rows, transform, channel_exchange):
        self.records, self.rows = list(records), list(rows)
        self.transform, self.channel_exchange = transform, channel_exchange

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        image, modality = read_image(r.path), modality_of(r)
        view = self.transform(image)
        other = self.channel_exchange(self.transform(image)) \
            if modality == VISIBLE and self.channel_exchange is not None else view
        return view, other, self.rows[i], r.camid, modality


def epoch_seed(seed, epoch, stage=0):
    return derive_seed(seed, ((epoch, 131), (stage, 17)), salt=5)


# ------------------------------------------------------------------------------------------ trainer

class Trainer(EpochSchedule):
    """A dual-stream network trained by GUR's bottom-up stages; a step is one epoch."""

    def __init__(self, ctx, args):
        self.ctx, self.opts, self.seed = ctx, Options.from_args(args), args.seed
        self.infrared = infrared_cameras(ctx.dataset)
        self.net = ctx.make_net()
        dual_stream(self.net.backbone, self.infrared, num_cameras=ctx.num_cameras,
                    specific_stages=self.opts.specific_stages)
        self.net.to(ctx.device)
        o = ctx.optim
        self.optimizer = build_optimizer(self.net, opt=o.opt, lr=o.lr, backbone_lr_mult=o.backbone_lr_mult,
                                         weight_decay=o.weight_decay, momentum=o.momentum)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.num_rounds = self.opts.epochs
        self.channel_exchange = ChannelExchange(gray=self.opts.channel_gray) if self.opts.channel_aug else None
        train = ctx.dataset.train
        self.modality = np.array([modality_of(r) for r in train])
        self.camids = np.array([r.camid for r in train])
        self.pids = np.array([r.pid for r in train])

    def step_seed(self, position):
        return epoch_seed(self.seed, position[0])

    def clu_phase(self, epoch):
        """``(transfer, smooth)``: whether CLU runs in ``epoch`` (0-based), and with smoothing."""
        left = self.opts.epochs - epoch
        return left <= self.opts.clu_epochs, left <= self.opts.clu_smooth_epochs

    def step(self, position):
        epoch, opts = position[0], self.opts
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * (0.1 ** (epoch // opts.lr_step) if opts.lr_step else 1.0)
        transfer, smooth = self.clu_phase(epoch)
        record, seconds = {"gur_clu": int(transfer) + int(smooth)}, {}
        camera_memories = None
        if opts.bottom_up and opts.camera_iters:
            t = time.time()
            camera_memories = self.intra_camera(epoch, record)
            seconds["camera"] = round(time.time() - t, 1)
        t = time.time()
        modality_memories = self.inter_camera(epoch, record, camera_memories, transfer, smooth)
        seconds["modality"] = round(time.time() - t, 1)
        if opts.bottom_up and opts.joint_iters and not smooth:
            t = time.time()
            self.inter_modality(epoch, record, modality_memories)
            seconds["joint"] = round(time.time() - t, 1)
        record["gur_seconds"] = seconds
        return record, (epoch + 1, 0), epoch + 1

    # ---------------------------------------------------------------- stages

    def _features(self):
        """``(features, clustered)``: L2-normalised train features of the current network (memories
        and CAE use them, as the training features) and the features DBSCAN sees (camera-centred
        with ``--center-features``)."""
        raw, feats, _, _ = self.ctx.clustering_features(self.net)
        return l2_normalize(raw), feats

    def _dbscan(self, feats, eps, min_samples, stage):
        """DBSCAN labels on the Jaccard distance of ``feats`` (rank 0 computes; all get them)."""
        return self.ctx.dist.on_main(self._dbscan_here, feats, eps, min_samples, stage)

    def _dbscan_here(self, feats, eps, min_samples, stage):
        n, ctx = feats.shape[0], self.ctx
        if n <= min_samples:
            return np.full(n, -1, dtype=np.int64)
        k1, k2 = min(ctx.k1, n - 1), min(ctx.k2, n - 1)
        if not is_auto(eps):
            return dbscan_jaccard(feats, eps=eps, min_samples=min_samples, k1=k1, k2=k2)
        try:
            labels, choice = dbscan_auto(feats, min_samples=min_samples, k1=k1, k2=k2)
        except ValueError as e:
            log.info(f"gur {stage}: no clustering ({e})")
            return np.full(n, -1, dtype=np.int64)
        return labels

    def intra_camera(self, epoch, record):
        """Stage 1: each camera clustered alone; returns ``{camid: its memory block after training}``."""
        opts = self.opts
        raw, feats = self._features()
        rows = np.full(len(feats), -1, dtype=np.int64)
        blocks, cameras = [], []
        for cam in np.unique(self.camids):
            idx = np.nonzero(self.camids == cam)[0]
            labels = self._dbscan(feats[idx], opts.camera_eps, opts.camera_min_samples, "camera")
            if not (labels >= 0).any():
                continue
            offset = sum(len(b) for b in blocks)
            rows[idx[labels >= 0]] = labels[labels >= 0] + offset
            blocks.append(centroids(raw[idx], labels))
            cameras.append(int(cam))
        self._label_record(record, "camera", rows)
        if not blocks:
            record["gur_camera_skipped"] = "no clusters"
            return None
        memory = self._memory(blocks)
        self._train(memory, rows, opts.camera_iters, epoch, "camera", record)
        return {cam: memory.block(d).cpu().numpy() for d, cam in enumerate(cameras)}

    def inter_camera(self, epoch, record, camera_memories, transfer, smooth):
        """Stage 2: each modality clustered alone (on CAE against its cameras' memories, or on the
        features); CLU relabels the visible side in transfer epochs. Returns the two modality
        memories ``[visible, infrared]`` (None where a modality found no cluster)."""
        opts = self.opts
        raw, feats = self._features()
        labels = np.full(len(feats), -1, dtype=np.int64)
        for m in (VISIBLE, INFRARED):
            idx = np.nonzero(self.modality == m)[0]
            x = feats[idx]
            if opts.cae and camera_memories:
                banks = [camera_memories[c] for c in sorted(camera_memories) if self._modality_of_camera(c) == m]
                if banks:
                    x = association_embedding(raw[idx], banks, sigma=opts.sigma).numpy()
            labels[idx] = self._dbscan(x, opts.modality_eps, opts.min_samples, "modality")
        vis, ir = (np.nonzero(self.modality == m)[0] for m in (VISIBLE, INFRARED))
        own = [centroids(raw[i], labels[i]) if (labels[i] >= 0).any() else None for i in (vis, ir)]
        self._label_record(record, "modality", labels)
        if transfer and own[1] is not None:
            unified = unify_labels(raw[vis], raw[ir], labels[ir], k=opts.clu_k, smooth=smooth,
                                   homogeneous=opts.clu_vote)
            rows = np.full(len(feats), -1, dtype=np.int64)
            rows[ir], rows[vis] = labels[ir], unified
            record["gur_clu_visible_labelled"] = int((unified >= 0).sum())
            record.update({f"gur_clu_{k}": v for k, v in cluster_quality(self.pids[vis], unified).items()})
            memory = self._memory([own[1]])
            self._train(memory, rows, opts.modality_iters, epoch, "modality", record)
            return [own[0], memory.block(0).cpu().numpy()]
        blocks = [b for b in own if b is not None]
        if not blocks:
            record["gur_modality_skipped"] = "no clusters"
            return own
        rows = labels.copy()
        if own[0] is not None and own[1] is not None:
            rows[ir] = np.where(labels[ir] >= 0, labels[ir] + len(own[0]), -1)
        memory = self._memory(blocks)
        self._train(memory, rows, opts.modality_iters, epoch, "modality", record)
        out, d = [], 0
        for b in own:
            out.append(None if b is None else memory.block(d).cpu().numpy())
            d += b is not None
        return out

    def inter_modality(self, epoch, record, modality_memories):
        """Stage 3: all samples clustered together (on CAE against the modality memories, or on
        the features); one shared memory."""
        opts = self.opts
        raw, feats = self._features()
        x = feats
        banks = [b for b in modality_memories if b is not None]
        if opts.cae and banks:
            x = association_embedding(raw, banks, sigma=opts.sigma).numpy()
        labels = self._dbscan(x, opts.joint_eps, opts.min_samples, "joint")
        self._label_record(record, "joint", labels)
        keep = labels >= 0
        if keep.any():
            mixed = [len({*self.modality[labels == k]}) == 2 for k in np.unique(labels[keep])]
            record["gur_joint_cross_modality_share"] = float(np.mean(mixed))
        if not keep.any():
            record["gur_joint_skipped"] = "no clusters"
            return
        self._train(self._memory([centroids(raw, labels)]), labels, opts.joint_iters, epoch, "joint", record)

    # ---------------------------------------------------------------- helpers

    def _modality_of_camera(self, cam):
        return INFRARED if cam in self.infrared else VISIBLE

    def _memory(self, blocks):
        return DomainMemory(blocks, temp=self.opts.temp, momentum=self.opts.memory_momentum, device=self.ctx.device)

    def _label_record(self, record, stage, labels):
        keep = labels >= 0
        record[f"gur_{stage}_clusters"] = int(len(np.unique(labels[keep])))
        record[f"gur_{stage}_outliers"] = int((~keep).sum())
        record.update({f"gur_{stage}_{k}": v for k, v in cluster_quality(self.pids, labels).items()})

    def _train(self, memory, rows, iters, epoch, stage, record):
        """``iters`` ADC iterations on the samples with a target row (``rows >= 0``)."""
        ctx = self.ctx
        if iters == 0:
            return
        keep = np.nonzero(rows >= 0)[0]
        need = ctx.batch_size // ctx.num_instances
        if len(np.unique(rows[keep])) < need:
            record[f"gur_{stage}_skipped"] = f"{len(np.unique(rows[keep]))} pseudo identities < {need} per batch"
            log.info(f"gur epoch {epoch + 1} {stage}: skipped ({record[f'gur_{stage}_skipped']})")
            return
        records = [ctx.dataset.train[i] for i in keep]
        sampler = RandomIdentitySampler(rows[keep].tolist(), num_instances=ctx.num_instances,
                                        batch_size=ctx.batch_size,
                                        seed=epoch_seed(self.seed, epoch, 1 + STAGES.index(stage)))
        loader = DataLoader(_Views(records, rows[keep].tolist(), ctx.train_tf, self.channel_exchange),
                            batch_size=ctx.batch_size, sampler=sampler, num_workers=ctx.workers, drop_last=True)
        batches, total = infinite_batches(loader, sampler), 0.0
        bar = progress(range(iters), desc=f"gur epoch {epoch + 1} {stage}", enabled=ctx.progress)
        for _ in bar:
            total += self.train_step(memory, *next(batches))
            bar.set_postfix(loss=f"{total / (_ + 1):.3f}")
        record[f"gur_{stage}_loss"] = total / iters

    def train_step(self, memory, view, other, rows, camids, modality):
        """One ADC iteration: forward (visible samples twice with ``--channel-aug``), the summed
        modality losses, an optimizer step, the momentum update of the memory."""
        device, dist = self.ctx.device, self.ctx.dist
        x, rows, camids, modality = view, rows.long(), camids.long(), modality.long()
        if self.channel_exchange is not None:
            vis = modality == VISIBLE
            x = torch.cat([view, other[vis]])
            rows, camids, modality = (torch.cat([t, t[vis]]) for t in (rows, camids, modality))
        x, rows, camids, modality = (t.to(device) for t in (x, rows, camids, modality))
        self.net.train()
        q = torch.nn.functional.normalize(dist.forward(self.net, x, camids=camids), dim=1)
        loss = modality_loss(memory.losses(q, rows), modality)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(self.net)
        self.optimizer.step()
        memory.update(q, rows)
        return loss.item()

    def state_dict(self):
        return {"model": self.net.state_dict(), "head_sizes": [], "optimizer": self.optimizer.state_dict(),
                "dual_stream": {"infrared_cameras": self.infrared, "num_cameras": self.ctx.num_cameras,
                                "specific_stages": self.opts.specific_stages}}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def summary(self):
        return {"infrared_cameras": self.infrared}
