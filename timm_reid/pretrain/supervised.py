"""Supervised source pretraining: cross-entropy (BN-neck head) + batch-hard triplet on P x K batches.

The classic starting point of unsupervised domain adaptation: train on a labeled source dataset
(any layout :func:`timm_reid.data.build_dataset` reads), or, with none given, on a synthetic source
world of :mod:`timm_reid.data.synthetic` with its own seed, cameras and identities (independent of
the demo's seed-0 world). The triplet loss uses the pooled backbone feature, cross-entropy the
BN-neck output (Luo et al., "Bag of Tricks").

Pretraining method ``supervised`` of the pretraining protocol (:mod:`timm_reid.pretrain.protocol`).
"""
from __future__ import annotations

import math
import os

import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from timm_reid._run import ConfigError
from timm_reid.pretrain.engine import Task
from timm_reid.pretrain.heads import BNNeckHead, batch_hard_triplet

__all__ = ["SupervisedTask", "load_source", "NAME", "DEFAULTS", "DATA", "add_arguments", "check", "build_task"]

NAME = "supervised"
# Sizes for 2 CPU cores: see docs/training.md "Pretrain without downloads" for what each takes on one thread.
DEFAULTS = {"epochs": 80, "lr": 1e-3, "batch_size": 64}
DATA = "a labeled source dataset (--dataset NAME --root DIR; none: a synthetic source world)"


def add_arguments(parser) -> None:
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


def check(args) -> list:
    problems = []
    if args.num_instances < 1:
        problems.append(f"--num-instances {args.num_instances} must be >= 1")
    elif args.batch_size % args.num_instances:
        problems.append(f"--batch-size {args.batch_size} must be a multiple of --num-instances "
                        f"{args.num_instances} (batch = P identities x K images)")
    problems += [f"--{k.replace('_', '-')} {getattr(args, k)} must be a finite number"
                 for k in ("margin", "random_erasing") if not math.isfinite(getattr(args, k))]
    if args.margin < 0:
        problems.append("--margin must be >= 0")
    if args.pad < 0:
        problems.append("--pad must be >= 0")
    if not 0 <= args.random_erasing <= 1:
        problems.append(f"--random-erasing {args.random_erasing} must be a probability in [0, 1]")
    return problems


def build_task(args, run_dir, pair_hook=None):
    """The source (loaded, or generated into ``RUN/source-data``), its backbone and the task;
    ``pair_hook`` is ISR's and not used here."""
    from timm_reid.data import build_transforms
    from timm_reid.pretrain.engine import build_backbone
    from timm_reid.pretrain.zero_shot import zero_shot

    dataset = load_source(dataset=args.dataset, root=args.root, run_dir=run_dir, seed=args.source_seed,
                          num_cameras=args.source_cameras, num_identities=args.source_identities,
                          num_test_identities=args.source_test_identities, height=args.height, width=args.width)
    if not args.no_progress:
        print(dataset.summary())
    transform = build_transforms(args.height, args.width, train=True, pad=args.pad,
                                 random_erasing_p=args.random_erasing)

    def source_test(model):
        return zero_shot(model, dataset, height=args.height, width=args.width, workers=args.workers)

    return SupervisedTask(build_backbone(args, dataset.num_cameras), dataset.train, transform=transform,
                          batch_size=args.batch_size, num_instances=args.num_instances, margin=args.margin,
                          seed=args.seed, workers=args.workers, device=args.device,
                          source_test=source_test if dataset.query and dataset.gallery else None)


def load_source(*, dataset: str | None, root: str | None, run_dir: str, seed: int, num_cameras: int,
                num_identities: int, num_test_identities: int, height: int, width: int):
    """The labeled source: ``dataset`` in ``root``, or a synthetic world generated once into
    ``root`` (default ``RUN/source-data``)."""
    from timm_reid.data import build_dataset

    if dataset is None or dataset == "synthetic":
        return build_dataset("synthetic", root or os.path.join(run_dir, "source-data"), seed=seed,
                             num_cameras=num_cameras, num_identities=num_identities,
                             num_test_identities=num_test_identities, image_size=(height, width))
    if root is None:
        raise ConfigError(f"--dataset {dataset} needs --root DIR, the folder that holds the dataset")
    try:
        return build_dataset(dataset, root)
    except ValueError as e:  # an unknown layout name or a layout problem: the user's data, not the code
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"--dataset {dataset} --root {root}: {e}") from None


class SupervisedTask(Task):
    """Cross-entropy + batch-hard triplet on the labeled ``records`` (pid -1 records are skipped)."""

    def __init__(self, backbone: nn.Module, records, *, transform, batch_size: int, num_instances: int,
                 margin: float, seed: int, workers: int = 0, device="cpu", source_test=None):
        from timm_reid.data import ImageDataset, RandomIdentitySampler

        records = [r for r in records if r.pid >= 0]
        num_classes = len({r.pid for r in records})
        if num_classes < 2:
            raise ConfigError(f"supervised pretraining needs at least 2 labeled identities, got {num_classes}")
        self.modules = nn.ModuleDict({"backbone": backbone,
                                      "head": BNNeckHead(backbone.num_features, num_classes)}).to(device)
        self.sampler = RandomIdentitySampler([r.pid for r in records], num_instances=num_instances,
                                             batch_size=batch_size, seed=seed)
        self.loader = DataLoader(ImageDataset(records, transform), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, drop_last=True)
        self.batch_size, self.margin, self.device = batch_size, margin, device
        self.num_classes = num_classes
        self.source_test = source_test  # the zero-shot test of the final backbone, or None

    def final_metrics(self, backbone):
        return {} if self.source_test is None else {"source_test": self.source_test(backbone)}

    def batches(self, epoch):
        self.sampler.set_epoch(epoch)
        return iter(self.loader)

    def num_batches(self) -> int:
        self.sampler.set_epoch(0)
        return len(self.sampler) // self.batch_size

    def loss(self, batch):
        images, pids, camids, _ = batch
        images, pids = images.to(self.device), pids.to(self.device)
        features = self.forward("backbone", images, camids=camids.to(self.device))
        logits = self.modules["head"](features)
        ce = F.cross_entropy(logits, pids)
        triplet = batch_hard_triplet(features, pids, margin=self.margin)
        accuracy = (logits.argmax(1) == pids).float().mean()
        return ce + triplet, {"ce": ce.item(), "triplet": triplet.item(), "accuracy": accuracy.item()}
