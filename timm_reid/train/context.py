"""What the shared harness hands to a training method: data, transforms, device, the shared
clustering and optimisation options, and a factory of fresh networks built from the model options.

Methods take their own options from their dataclass (``iics.Options``, ``ice.Options``) and
everything else from here, so adding a method never edits the harness or another method.
"""

from dataclasses import dataclass
from typing import Callable

from timm_reid.distributed import LOCAL, Dist
from timm_reid.train.features import clustering_features


@dataclass(frozen=True)
class OptimOptions:
    opt: str
    lr: float
    backbone_lr_mult: float
    weight_decay: float
    momentum: float


@dataclass
class Context:
    dataset: object  # timm_reid.data.ReIDDataset
    num_cameras: int
    train_tf: Callable
    test_tf: Callable
    device: str
    workers: int
    test_batch_size: int
    progress: bool
    seed: int
    center: bool  # per-camera centring of the clustering features
    k1: int
    k2: int
    lambda_value: float
    batch_size: int  # P x K
    num_instances: int  # K
    optim: OptimOptions
    make_net: Callable  # () -> ReIDNet, a fresh network with the run's initial weights
    dist: Dist = LOCAL  # the torchrun process group (timm_reid.distributed): forwards, clustering, gradients

    def clustering_features(self, net, records=None):
        """``(raw, clustered, pids, camids)`` of the train split (or ``records``) under ``net``."""
        return clustering_features(net, self.dataset.train if records is None else records,
                                   transform=self.test_tf, batch_size=self.test_batch_size,
                                   workers=self.workers, center=self.center, progress=self.progress,
                                   dist=self.dist)
