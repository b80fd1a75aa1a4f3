"""Self-supervised pretraining on unlabeled video crops: ISR and the MoCo baseline.

Both draw the same crops per step (:func:`plan_steps`): every video is visited
``visits_per_epoch`` times per epoch; a visit takes ``frames_per_video`` frames of one video whose
pairwise frame interval is at most ``delta_max``; visits of different videos are packed into one
step while each of its ``frames_per_video`` "super" frames holds at most ``batch_size`` crops
(a single visit with more is truncated, as in the paper).

- :class:`ISRTask` (Dou et al., ICCV 2023): for each pair of super frames and each video in both,
  the positive pairs are the bipartite matching of that video's two crop sets; the
  reliability-guided loss runs in both directions with the whole other super frame as candidates
  (other videos' crops are negatives); plus ``lambda`` times the memory-queue loss over hard
  negatives of other videos. Training never sees a track label; matched pairs can be handed to
  ``pair_hook(epoch, pairs, reliabilities)`` for diagnostics.
- :class:`MoCoTask` (He et al., CVPR 2020): instance discrimination, two augmented views of
  every crop of the step, momentum key encoder, FIFO queue of keys as negatives.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from timm_reid._run import ConfigError
from timm_reid.data import IMAGENET_MEAN, IMAGENET_STD, read_image
from timm_reid.pretrain.contrastive import FeatureQueue, match_frames, queue_loss, reliability_loss
from timm_reid.pretrain.engine import Task

__all__ = ["plan_steps", "video_transform", "ISRTask", "MoCoTask", "VIDEO_GROUP", "add_video_arguments",
           "video_problems", "load_video_data"]

VIDEO_GROUP = "unlabeled video crops (--method isr / moco)"
VIDEO_DATA = "unlabeled video crops (--data DIR)"


def add_video_arguments(parser) -> None:
    """The options of the video crops and their sampling, shared by ISR and MoCo (one group, titled
    :data:`VIDEO_GROUP`, which ``--help`` shows once)."""
    g = parser.add_argument_group(VIDEO_GROUP)
    g.add_argument("--data", default=None, metavar="DIR",
                   help="video-crop folder (videos/<video>/<frame>_<det>.jpg); None: synthetic street video in "
                        "RUN/video-data")
    g.add_argument("--video-seed", default=202, type=int, help="synthetic street video: generator seed")
    g.add_argument("--num-videos", default=48, type=int, help="synthetic street video: videos")
    g.add_argument("--num-frames", default=40, type=int, help="synthetic street video: frames per video")
    g.add_argument("--delta-max", default=4, type=int, help="largest frame interval of the frames of a visit")
    g.add_argument("--frames-per-video", default=3, type=int,
                   help="frames drawn per video visit (ISR pairs them with each other)")
    g.add_argument("--visits-per-epoch", default=4, type=int, help="times each video is visited per epoch")
    g.add_argument("--tau", default=0.1, type=float, help="softmax temperature")
    g.add_argument("--queue-size", default=1024, type=int, help="memory queue length (features)")
    g.add_argument("--color-jitter", default=0.2, type=float,
                   help="augmentation: brightness, contrast and saturation jitter (with flip; moco also pads by "
                        "--pad and crops)")


def video_problems(args) -> list:
    """What is wrong with the shared video options, one sentence each."""
    problems = [f"--{k.replace('_', '-')} {getattr(args, k)} must be >= 1"
                for k in ("num_videos", "num_frames", "delta_max", "visits_per_epoch", "queue_size")
                if getattr(args, k) < 1]
    if args.frames_per_video < 2:
        problems.append(f"--frames-per-video {args.frames_per_video} must be >= 2 (frames are paired)")
    problems += [f"--{k.replace('_', '-')} {getattr(args, k)} must be a finite number"
                 for k in ("tau", "color_jitter") if not math.isfinite(getattr(args, k))]
    if args.color_jitter < 0:
        problems.append("--color-jitter must be >= 0")
    if args.tau <= 0:
        problems.append("--tau must be > 0")
    return problems


def load_video_data(args, run_dir: str):
    """``--data DIR`` (the video-crop layout), or synthetic street video generated once into
    ``RUN/video-data``."""
    import os

    from timm_reid.data.video import load_or_generate_video, load_video_crops

    try:
        if args.data is not None:
            return load_video_crops(args.data)
        return load_or_generate_video(os.path.join(run_dir, "video-data"), seed=args.video_seed,
                                      num_videos=args.num_videos, num_frames=args.num_frames,
                                      image_size=(args.height, args.width))
    except ValueError as e:  # a layout problem, or video-data of another config: the user's data
        raise ConfigError(f"--data {args.data}: {e}" if args.data is not None else str(e)) from None


def video_task_options(args) -> dict:
    """The keyword arguments of :class:`ISRTask` / :class:`MoCoTask` the shared options give."""
    return dict(frames_per_video=args.frames_per_video, delta_max=args.delta_max, batch_size=args.batch_size,
                visits=args.visits_per_epoch, seed=args.seed, workers=args.workers, device=args.device)


def video_transform(height: int, width: int, *, color_jitter: float, pad: int = 0) -> T.Compose:
    """ISR's augmentation: resize, horizontal flip, colour jitter (+ pad and random crop)."""
    steps = [T.Resize((height, width)), T.RandomHorizontalFlip()]
    if pad:
        steps += [T.Pad(pad), T.RandomCrop((height, width))]
    if color_jitter:
        steps += [T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _pick_frames(frames: list[int], count: int, delta_max: int, rng: np.random.Generator) -> list[int]:
    """Up to ``count`` distinct frames within one window of ``delta_max`` (at least 2), or []."""
    for start in rng.permutation(len(frames)):
        window = [f for f in frames[start:] if f - frames[start] <= delta_max]
        if len(window) >= 2:
            return sorted(int(f) for f in rng.choice(window, size=min(count, len(window)), replace=False))
    return []


def plan_steps(frames_by_video: list[dict[int, list[int]]], *, visits: int, frames_per_video: int,
               delta_max: int, max_images: int, rng: np.random.Generator) -> list[list[list[int]]]:
    """The steps of one epoch: each a list of ``frames_per_video`` super frames (crop indices).

    A video appears at most once per step; videos without two frames within ``delta_max`` are
    never visited.
    """
    steps, current, members = [], [[] for _ in range(frames_per_video)], set()
    for _ in range(visits):
        for video in rng.permutation(len(frames_by_video)):
            frames = _pick_frames(sorted(frames_by_video[video]), frames_per_video, delta_max, rng)
            if not frames:
                continue
            crops = [frames_by_video[video][f] for f in frames]
            full = any(len(slot) + len(c) > max_images for slot, c in zip(current, crops))
            if members and (full or video in members):
                steps.append(current)
                current, members = [[] for _ in range(frames_per_video)], set()
            for slot, c in zip(current, crops):
                slot.extend(c[:max_images - len(slot)])
            members.add(int(video))
    if members:
        steps.append(current)
    return steps


class _Crops(Dataset):
    def __init__(self, paths: list[str], transform: Callable):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.transform(read_image(self.paths[index]))


class _TwoViews:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


class _StepSampler(Sampler[list[int]]):
    """Yields the flattened crop indices of each planned step (set ``steps`` before iterating)."""

    def __init__(self):
        self.steps: list[list[list[int]]] = []

    def __iter__(self):
        return iter([[i for slot in step for i in slot] for step in self.steps])

    def __len__(self):
        return len(self.steps)


class _VideoTask(Task):
    """Shared data plumbing of ISR and MoCo."""

    def __init__(self, crops, *, transform, frames_per_video: int, delta_max: int, batch_size: int,
                 visits: int, seed: int, workers: int, device):
        self.crops, self.device, self.seed = crops, device, seed
        self.video_of = torch.tensor([c.video for c in crops.crops], dtype=torch.long)
        self.frames_by_video = [crops.frames(v) for v in range(len(crops.videos))]
        self.plan_kw = dict(visits=visits, frames_per_video=frames_per_video, delta_max=delta_max,
                            max_images=batch_size)
        if not plan_steps(self.frames_by_video, **{**self.plan_kw, "visits": 1}, rng=np.random.default_rng(0)):
            raise ConfigError(f"no video of {crops.root} has two frames within --delta-max {delta_max}; "
                             "raise --delta-max or give videos with more frames")
        self.sampler = _StepSampler()
        self.loader = DataLoader(_Crops([c.path for c in crops.crops], transform), batch_sampler=self.sampler,
                                 num_workers=workers)

    def final_metrics(self, backbone):
        return {"videos": len(self.crops.videos), "crops": len(self.crops.crops)}

    def plan(self, epoch: int) -> list[list[list[int]]]:
        return plan_steps(self.frames_by_video, **self.plan_kw, rng=np.random.default_rng([self.seed, epoch]))

    def batches(self, epoch):
        self.sampler.steps = self.plan(epoch)
        return zip(self.sampler.steps, self.loader)

    def num_batches(self) -> int:
        return len(self.plan(0))


class ISRTask(_VideoTask):
    """Identity-seeking self-supervised representation learning (see the module docstring)."""

    def __init__(self, backbone: nn.Module, crops, *, gamma: float, tau: float, queue_weight: float,
                 queue_size: int, hard_negatives: int, pair_hook: Callable | None = None, **data):
        super().__init__(crops, **data)
        self.modules = nn.ModuleDict({"backbone": backbone}).to(self.device)
        self.gamma, self.tau, self.queue_weight, self.k = gamma, tau, queue_weight, hard_negatives
        self.queue = FeatureQueue(queue_size, backbone.num_features)
        self.pair_hook = pair_hook
        self._pairs, self._reliability, self._epoch = [], [], 0

    def batches(self, epoch):
        self._pairs, self._reliability, self._epoch = [], [], epoch
        return super().batches(epoch)

    def loss(self, batch):
        step, images = batch
        flat = [i for slot in step for i in slot]
        videos = self.video_of[flat].to(self.device)
        feats = F.normalize(self.forward("backbone", images.to(self.device), camids=videos), dim=1)
        bounds = np.cumsum([0] + [len(s) for s in step])
        slots = [(feats[a:b], videos[a:b], flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        terms, reliabilities = [], []
        for a in range(len(slots)):
            for b in range(a + 1, len(slots)):
                rows, cols = self._match(slots[a], slots[b])
                if len(rows) == 0:
                    continue
                for (fx, _, _), (fy, _, _), r, c in ((slots[a], slots[b], rows, cols), (slots[b], slots[a], cols, rows)):
                    loss, p = reliability_loss(fx[r], fy, c, gamma=self.gamma, tau=self.tau)
                    terms.append(loss)
                    reliabilities.append(p)
                self._pairs += [(slots[a][2][i], slots[b][2][j]) for i, j in zip(rows.tolist(), cols.tolist())]
                self._reliability += reliabilities[-2].tolist()
        rc = torch.stack(terms).mean() if terms else feats.sum() * 0.0
        lq = queue_loss(feats, videos, self.queue, k=self.k)
        self.queue.push(feats.detach().cpu(), videos.cpu())
        p_mean = torch.cat(reliabilities).mean().item() if reliabilities else float("nan")
        return rc + self.queue_weight * lq, {"rc": rc.item(), "queue": lq.item(), "reliability": p_mean}

    @staticmethod
    def _match(x_slot, y_slot):
        """Matching within each video present in both super frames, as indices into the slots."""
        (fx, vx, _), (fy, vy, _) = x_slot, y_slot
        rows, cols = [], []
        for video in torch.unique(vx).tolist():
            ix = torch.nonzero(vx == video).squeeze(1)
            iy = torch.nonzero(vy == video).squeeze(1)
            if len(iy) == 0:
                continue
            r, c = match_frames(fx[ix], fy[iy])
            rows.append(ix[torch.from_numpy(r)])
            cols.append(iy[torch.from_numpy(c)])
        if not rows:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(rows).to(fx.device), torch.cat(cols).to(fx.device)

    def end_epoch(self, epoch):
        if self.pair_hook is not None:
            self.pair_hook(epoch, list(self._pairs), list(self._reliability))
        return {"pairs": len(self._pairs)}

    def state_dict(self):
        return {"queue": self.queue.state_dict()}

    def load_state_dict(self, state):
        self.queue.load_state_dict(state["queue"])


class MoCoTask(_VideoTask):
    """MoCo-style instance discrimination on the same crops (the paper's baseline row)."""

    def __init__(self, backbone: nn.Module, crops, *, tau: float, queue_size: int, momentum: float, **data):
        data["transform"] = _TwoViews(data["transform"])
        super().__init__(crops, **data)
        key = copy.deepcopy(backbone).requires_grad_(False)
        self.modules = nn.ModuleDict({"backbone": backbone, "key": key}).to(self.device)
        self.tau, self.momentum = tau, momentum
        self.queue = FeatureQueue(queue_size, backbone.num_features)

    def loss(self, batch):
        step, (view_q, view_k) = batch
        flat = [i for slot in step for i in slot]
        videos = self.video_of[flat].to(self.device)
        q = F.normalize(self.forward("backbone", view_q.to(self.device), camids=videos), dim=1)
        with torch.no_grad():
            k = F.normalize(self.forward("key", view_k.to(self.device), camids=videos), dim=1)
        negatives, _ = self.queue.entries()
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.to(q).t()], dim=1) / self.tau
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        self.queue.push(k.cpu(), videos.cpu())
        return loss, {"instance_accuracy": (logits.argmax(1) == 0).float().mean().item()}

    @torch.no_grad()
    def after_step(self):
        for pk, pq in zip(self.modules["key"].parameters(), self.modules["backbone"].parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)
        for bk, bq in zip(self.modules["key"].buffers(), self.modules["backbone"].buffers()):
            bk.copy_(bq)

    def state_dict(self):
        return {"queue": self.queue.state_dict()}

    def load_state_dict(self, state):
        self.queue.load_state_dict(state["queue"])
