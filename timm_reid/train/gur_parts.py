"""GUR's training pieces (Yang, Chen, Ye, ICCV 2023), independent of the harness.

- :class:`DomainMemory`: the cluster memories of augmented dual-contrastive (ADC) learning, one
  block of L2-normalised centroids per domain (a camera in the intra-camera stage, a modality in
  the inter-camera stage, one shared block in the inter-modality stage), the ClusterNCE loss of
  each sample against its own domain's block (GUR Eqs. 3-5) and the momentum update.
- :class:`ChannelExchange`: channel augmentation of the visible stream (Ye et al., ICCV 2021, as
  GUR's code uses it): one colour channel, drawn uniformly, copied into all three.
- :func:`modality_loss`: ``L = L_infrared + L_visible``, each the mean over its modality's samples.

The formulas are in the docstrings; ``tests/train/test_gur.py`` checks them with loops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from timm_reid.data.layouts import INFRARED, VISIBLE

__all__ = ["ChannelExchange", "DomainMemory", "GRAY_WEIGHTS", "centroids", "modality_loss"]

# ITU-R 601 luma weights (the grayscale option of the channel augmentation, as the reference).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


class ChannelExchange:
    """``img[c'] = img[k]`` for every channel ``c'``, with ``k`` drawn uniformly from ``{0, 1, 2}``
    (or from ``{0, 1, 2, gray}`` with ``gray=True``: the weighted sum ``GRAY_WEIGHTS . img`` in all
    three channels). Works on a (3, H, W) tensor (the transformed image; a new tensor is
    returned). Draws from torch's global generator, which the harness seeds every step."""

    def __init__(self, gray: bool = False):
        self.gray = bool(gray)

    def choice(self) -> int:
        return int(torch.randint(4 if self.gray else 3, (1,)))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"ChannelExchange needs a (3, H, W) image tensor, got shape {tuple(img.shape)}")
        return self.apply(img, self.choice())

    @staticmethod
    def apply(img: torch.Tensor, k: int) -> torch.Tensor:
        if k == 3:
            w = torch.as_tensor(GRAY_WEIGHTS, dtype=img.dtype, device=img.device)
            one = (w[:, None, None] * img).sum(0)
        else:
            one = img[k]
        return one.unsqueeze(0).expand(3, -1, -1).clone()


def centroids(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, D) L2-normalised mean feature of each cluster ``0..K-1`` (labels -1 left out)."""
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    out = np.zeros((k, features.shape[1]), dtype=np.float32)
    np.add.at(out, labels[labels >= 0], features[labels >= 0])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class DomainMemory:
    """Cluster memories of several domains in one (R, D) tensor of unit rows.

    ``blocks[d]`` (C_d, D) are domain ``d``'s centroids; row ``r`` of the memory belongs to
    domain ``domain_of_row[r]``. A sample whose target is row ``r`` is contrasted against the rows of
    its own domain only (ClusterNCE, GUR Eqs. 3-4):

        ``loss_i = -log( exp(q_i . m_r / temp) / sum_{r' in domain(r)} exp(q_i . m_r' / temp) )``

    with ``q_i`` the L2-normalised feature. :meth:`update` is the momentum update of the
    reference's memory (Cluster Contrast), sample by sample in batch order:
    ``m_r <- normalize(momentum * m_r + (1 - momentum) * q_i)``.
    """

    def __init__(self, blocks, *, temp: float = 0.05, momentum: float = 0.2, device="cpu"):
        blocks = [torch.as_tensor(np.asarray(b), dtype=torch.float32) for b in blocks]
        if not blocks or any(b.dim() != 2 or b.shape[0] == 0 for b in blocks):
            raise ValueError("DomainMemory needs at least one domain, each with at least one centroid row")
        self.features = F.normalize(torch.cat(blocks), dim=1).to(device)
        sizes = [b.shape[0] for b in blocks]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.domain_of_row = torch.repeat_interleave(torch.arange(len(blocks)), torch.as_tensor(sizes)).to(device)
        self.temp, self.momentum = float(temp), float(momentum)

    def __len__(self):
        return self.features.shape[0]

    def block(self, d: int) -> torch.Tensor:
        return self.features[self.offsets[d]:self.offsets[d + 1]]

    def row(self, domain: int, label: int) -> int:
        """Memory row of cluster ``label`` of domain ``domain``."""
        return int(self.offsets[domain] + label)

    def losses(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B,) ClusterNCE loss of each L2-normalised feature ``q`` against its target row's domain."""
        logits = q @ self.features.t() / self.temp
        other = self.domain_of_row[None, :] != self.domain_of_row[rows][:, None]
        return F.cross_entropy(logits.masked_fill(other, float("-inf")), rows, reduction="none")

    @torch.no_grad()
    def update(self, q: torch.Tensor, rows: torch.Tensor) -> None:
        for x, r in zip(q.detach(), rows.tolist()):
            m = self.momentum * self.features[r] + (1.0 - self.momentum) * x
            self.features[r] = m / m.norm().clamp_min(1e-12)


def modality_loss(per_sample: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """GUR Eq. 5: ``L_infrared + L_visible``, each the mean loss over that modality's samples
    (a modality absent from the batch adds nothing)."""
    total = per_sample.new_zeros(())
    for m in (VISIBLE, INFRARED):
        mask = modality == m
        if bool(mask.any()):
            total = total + per_sample[mask].mean()
    return total
