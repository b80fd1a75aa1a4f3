"""Samplers: P x K identity batches and camera-structured batches.

Both are deterministic given ``seed`` and the epoch set with ``set_epoch`` (call it before
each epoch, as with ``DistributedSampler``), and draw from their own numpy generator, never
from global random state.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["RandomIdentitySampler", "CameraBatchSampler", "infinite_batches"]


def _group(labels: Sequence[int], *, skip_negative: bool) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        if label >= 0 or not skip_negative:
            groups.setdefault(int(label), []).append(index)
    return dict(sorted(groups.items()))


class RandomIdentitySampler(Sampler[int]):
    """Indices forming batches of P identities x K instances (``P = batch_size // K``).

    Use with ``DataLoader(dataset, batch_size=batch_size, sampler=sampler)``: the epoch's
    length is a multiple of ``batch_size``, and each consecutive ``batch_size`` indices hold
    ``P`` distinct identities with ``K = num_instances`` indices each. Records with pid -1
    (unknown, un-clustered) are never sampled. Per epoch, each identity's images are shuffled
    and cut into groups of K (the remainder is dropped; an identity with fewer than K
    images is sampled K times with replacement); batches draw P identities that still have
    groups, until fewer than P remain.
    """

    def __init__(self, pids: Sequence[int], *, num_instances: int = 4, batch_size: int = 64,
                 seed: int = 0):
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                             f"num_instances={num_instances} (batch = P identities x K)")
        self.groups = _group(pids, skip_negative=True)
        self.num_instances = num_instances
        self.num_identities = batch_size // num_instances
        if len(self.groups) < self.num_identities:
            raise ValueError(f"{len(self.groups)} identities with pid >= 0 cannot fill "
                             f"batches of {self.num_identities} identities x {num_instances}; "
                             "lower batch_size or raise num_instances")
        self.seed = seed
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._draw(np.random.default_rng([self.seed, self.epoch])))
        return self._cache[1]

    def _draw(self, rng: np.random.Generator) -> list[int]:
        k = self.num_instances
        chunks: dict[int, list[list[int]]] = {}
        for pid, members in self.groups.items():
            order = (rng.choice(members, size=k, replace=True) if len(members) < k
                     else rng.permutation(members))
            chunks[pid] = [order[i:i + k].tolist() for i in range(0, len(order) - k + 1, k)]
        available = list(chunks)
        indices: list[int] = []
        while len(available) >= self.num_identities:
            chosen = rng.choice(len(available), size=self.num_identities, replace=False)
            for pid in [available[i] for i in chosen]:
                indices.extend(chunks[pid].pop())
                if not chunks[pid]:
                    available.remove(pid)
        return indices

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class CameraBatchSampler(Sampler[list[int]]):
    """Batches of indices grouped by camera, for the intra-camera stage.

    Use with ``DataLoader(dataset, batch_sampler=sampler)``. Each camera's indices are
    shuffled per epoch and cut into groups of ``images_per_camera`` (the remainder dropped).

    - ``single_camera=False`` (default, the IICS reference's zip over per-camera loaders):
      every batch holds one group from each camera, cameras in increasing order, so a batch
      has ``num_cameras * images_per_camera`` indices; an epoch has as many batches as the
      smallest camera has groups.
    - ``single_camera=True``: every batch is one group of a single camera; an epoch holds
      every group of every camera in random order.
    """

    def __init__(self, camids: Sequence[int], *, images_per_camera: int = 16,
                 single_camera: bool = False, seed: int = 0):
        if images_per_camera < 1:
            raise ValueError(f"images_per_camera={images_per_camera} must be >= 1")
        self.groups = _group(camids, skip_negative=False)
        negative = [c for c in self.groups if c < 0]
        if negative:
            raise ValueError(f"camera ids must be >= 0, got {negative}")
        small = {c: len(m) for c, m in self.groups.items() if len(m) < images_per_camera}
        if small:
            raise ValueError(f"camera(s) with fewer images than images_per_camera="
                             f"{images_per_camera}: {small} (camid: images); lower "
                             "images_per_camera or drop those cameras")
        self.images_per_camera = images_per_camera
        self.single_camera = single_camera
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _camera_chunks(self, rng: np.random.Generator) -> list[list[list[int]]]:
        k = self.images_per_camera
        chunks = []
        for members in self.groups.values():
            order = rng.permutation(members)
            chunks.append([order[i:i + k].tolist() for i in range(0, len(order) - k + 1, k)])
        return chunks

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = self._camera_chunks(rng)
        if self.single_camera:
            flat = [chunk for camera in chunks for chunk in camera]
            for i in rng.permutation(len(flat)):
                yield flat[i]
        else:
            for step in range(len(self)):
                yield [i for camera in chunks for i in camera[step]]

    def __len__(self) -> int:
        counts = [len(m) // self.images_per_camera for m in self.groups.values()]
        return sum(counts) if self.single_camera else min(counts)


def infinite_batches(loader, sampler):
    """``loader``'s batches without end, ``sampler.set_epoch`` advanced at every pass (so that a
    fixed number of iterations may span several passes of a shuffled sampler)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
