"""The loop every method shares: run directory, AdamW with warm-up + cosine, checkpoints, metrics.

A method is a :class:`Task`: the modules it trains, its batches per epoch and its loss. The engine
owns the optimizer and the schedule, seeds each epoch from ``(seed, epoch)`` (so a run resumed at an
epoch boundary draws the numbers the uninterrupted run drew), writes ``RUN/metrics.jsonl`` (one line
per epoch) and ``RUN/last.pth`` after every epoch (atomic; only tensors and plain types, read back
with ``torch.load(..., weights_only=True)``).
"""
from __future__ import annotations

import math
import os
import time
from typing import Iterable

import torch
from torch import nn

from timm_reid._records import check_stored_options, options_entry
from timm_reid._run import (CHECKPOINT_FILE, RunFolder, atomic_save, derive_seed, load_checkpoint, progress_line,
                            seed_everything, write_json, write_jsonl)
from timm_reid._run import progress as progress_bar
from timm_reid._runlock import RunLock
from timm_reid.distributed import LOCAL, Dist

__all__ = ["Task", "build_backbone", "fit", "lr_at", "epoch_seed", "atomic_save", "write_json", "prepare_run_dir",
           "load_state", "seed_all", "CHECKPOINT_FILE", "RUNS"]

# config.json: the config file before pretraining shared the run layer's config.yaml (old folders).
RUNS = RunFolder(run_files=("config.yaml", "config.json", "metrics.jsonl", CHECKPOINT_FILE, "final_metrics.json",
                            "backbone.safetensors"),
                 # what a run that stopped before its first epoch leaves: starting it again reuses the data
                 restartable=frozenset({"config.yaml", "config.json", "source-data", "video-data"}),
                 writer="timm_reid.pretrain")


class Task:
    """What a method provides. ``modules`` holds everything trained (the backbone first).

    Forwards go through :meth:`forward`, so that under torchrun (``dist``, set by the run) each
    process computes its share of the batch and every loss sees the whole batch."""

    modules: nn.ModuleDict
    dist: Dist = LOCAL

    def forward(self, name: str, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """``modules[name](images, **kwargs)`` over the whole batch (shared by the processes)."""
        return self.dist.forward(self.modules[name], images, **kwargs)

    def batches(self, epoch: int) -> Iterable:
        raise NotImplementedError

    def num_batches(self) -> int:
        raise NotImplementedError

    def loss(self, batch) -> tuple[torch.Tensor, dict]:
        """The loss to minimise and floats to average over the epoch."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. a momentum encoder update)."""

    def end_epoch(self, epoch: int) -> dict:
        """Diagnostics of the epoch (written to metrics.jsonl)."""
        return {}

    def state_dict(self) -> dict:
        """State beside ``modules`` to checkpoint (tensors and plain types only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def final_metrics(self, backbone: nn.Module) -> dict:
        """Facts and scores of the trained backbone for ``final_metrics.json`` (rank 0 only)."""
        return {}


def build_backbone(args, num_cameras: int | None) -> nn.Module:
    """A pooled-feature (``num_classes=0``) backbone, patched as the options say."""
    from timm_reid.factory import create_model
    from timm_reid.options import PatchOptions

    return create_model(args.model, PatchOptions.from_flags(args, num_cameras), num_classes=0)


def lr_at(step: int, *, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from ``peak / warmup`` to ``peak`` over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * peak * (1 + math.cos(math.pi * min(progress, 1.0)))


def epoch_seed(seed: int, epoch: int) -> int:
    return derive_seed(seed, ((epoch, 7919),), salt=17)


seed_all = seed_everything  # the name benchmarks and older code import


def prepare_run_dir(path: str, *, resuming: bool, lock: RunLock | None = None) -> str:
    """Create ``path`` (holding ``lock``, a :class:`RunLock` on it, from here on); refuse a
    non-empty folder unless resuming a run of ours (a run that stopped before its first checkpoint,
    holding only its config and generated data, restarts; a data generator killed there left a
    temporary folder, which is removed). See :class:`timm_reid._run.RunFolder`."""
    return RUNS.prepare(path, resuming=resuming, lock=lock)


def load_state(run_dir: str) -> dict:
    return load_checkpoint(os.path.join(run_dir, CHECKPOINT_FILE), required=("args", "modules"),
                           writer="timm_reid.pretrain")


def fit(task: Task, *, run_dir: str, args_dict: dict, epochs: int, lr: float, weight_decay: float,
        warmup_epochs: float, seed: int, state: dict | None = None, progress: bool = True) -> list[dict]:
    """Train ``task`` for ``epochs`` (continuing ``state`` of :func:`load_state`); return the history.
    Under torchrun (``task.dist``) gradients are averaged over the processes and only rank 0 writes."""
    dist = task.dist
    progress = progress and dist.is_main
    params = [p for p in task.modules.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = task.num_batches()
    total, warmup = epochs * per_epoch, int(round(warmup_epochs * per_epoch))
    history, start_epoch, elapsed = [], 0, 0.0
    if state is not None:
        check_stored_options(task.modules["backbone"], state, os.path.join(run_dir, CHECKPOINT_FILE))
        task.modules.load_state_dict(state["modules"])
        optimizer.load_state_dict(state["optimizer"])
        task.load_state_dict(state["task"])
        history, start_epoch, elapsed = state["history"], state["epoch"], state["elapsed"]
    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        seed_everything(epoch_seed(seed, epoch))
        task.modules.train()
        sums, count = {}, 0
        bar = progress_bar(task.batches(epoch), total=per_epoch, desc=f"epoch {epoch + 1}/{epochs}", enabled=progress)
        for i, batch in enumerate(bar):
            current = lr_at(epoch * per_epoch + i, total=total, warmup=warmup, peak=lr)
            for group in optimizer.param_groups:
                group["lr"] = current
            loss, logs = task.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}, step {i + 1}: the loss is {loss.item()}; "
                                         "lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(task.modules)
            optimizer.step()
            task.after_step()
            for k, v in {"loss": loss.item(), **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "lr": current if count else lr, "steps": count,
                  **{k: v / max(count, 1) for k, v in sums.items()}, "seconds": round(seconds, 2)}
        record.update(task.end_epoch(epoch))
        elapsed += time.perf_counter() - start
        history.append(record)
        if not dist.is_main:
            continue
        write_jsonl(history, os.path.join(run_dir, "metrics.jsonl"))
        atomic_save({"args": args_dict, "modules": task.modules.state_dict(), **options_entry(task.modules["backbone"]),
                     "optimizer": optimizer.state_dict(), "task": task.state_dict(),
                     "history": history, "epoch": epoch + 1, "elapsed": elapsed},
                    os.path.join(run_dir, CHECKPOINT_FILE))
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                              if k not in ("epoch", "steps") and isinstance(v, float))
            progress_line(f"epoch {epoch + 1}/{epochs}: {shown}")
    return history
