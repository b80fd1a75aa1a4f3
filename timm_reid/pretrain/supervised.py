"""Supervised source pretraining: cross-entropy (BN-neck head) + batch-hard triplet on P x K batches.

The classic starting point of unsupervised domain adaptation: train on a labeled source dataset
(any layout :func:`timm_reid.data.build_dataset` reads), or, with none given, on a synthetic source
world of :mod:`timm_reid.data.synthetic` with its own seed, cameras and identities (independent of
the demo's seed-0 world). The triplet loss uses the pooled backbone feature, cross-entropy the
BN-neck output (Luo et al., "Bag of Tricks").
"""
from __future__ import annotations

import os

import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from timm_reid.pretrain.engine import Task
from timm_reid.pretrain.heads import BNNeckHead, batch_hard_triplet

__all__ = ["SupervisedTask", "load_source"]


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
        raise ValueError(f"--dataset {dataset} needs --root DIR, the folder that holds the dataset")
    return build_dataset(dataset, root)


class SupervisedTask(Task):
    """Cross-entropy + batch-hard triplet on the labeled ``records`` (pid -1 records are skipped)."""

    def __init__(self, backbone: nn.Module, records, *, transform, batch_size: int, num_instances: int,
                 margin: float, seed: int, workers: int = 0, device="cpu"):
        from timm_reid.data import ImageDataset, RandomIdentitySampler

        records = [r for r in records if r.pid >= 0]
        num_classes = len({r.pid for r in records})
        if num_classes < 2:
            raise ValueError(f"supervised pretraining needs at least 2 labeled identities, got {num_classes}")
        self.modules = nn.ModuleDict({"backbone": backbone,
                                      "head": BNNeckHead(backbone.num_features, num_classes)}).to(device)
        self.sampler = RandomIdentitySampler([r.pid for r in records], num_instances=num_instances,
                                             batch_size=batch_size, seed=seed)
        self.loader = DataLoader(ImageDataset(records, transform), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, drop_last=True)
        self.batch_size, self.margin, self.device = batch_size, margin, device
        self.num_classes = num_classes

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
