"""Data-parallel training under torchrun, built so that N processes compute what one process does.

``torchrun --nproc-per-node N -m timm_reid.train ...`` (or ``pretrain``) starts N copies of the
command; :func:`init` joins them into one process group (NCCL on CUDA, gloo on CPU) and returns a
:class:`Dist` that the pipelines thread through their work. The rules that make a run on N processes
equal the 1-process run up to float rounding:

* every process draws the same random numbers and loads the same global batch (same seeds, same
  sampler); each forwards only its contiguous share of the rows (:meth:`Dist.forward`), and the
  features are gathered back into the global batch in its original order;
* every loss is computed from the gathered global batch, identically on every process, so it *is*
  the 1-process loss; the gather's backward sums the gradient of each row over the processes, and
  :meth:`Dist.average_gradients` divides the summed parameter gradients by N, which leaves exactly
  the 1-process gradient (parameters, optimizer states and EMA copies therefore stay identical);
* AIBN and TNorm get the process group (:meth:`Dist.attach`), so their batch statistics are those
  of the global batch; plain ``BatchNorm`` becomes ``SyncBatchNorm`` on CUDA (torch has no CPU
  SyncBatchNorm: on CPU its statistics stay per process, and a warning says so);
* feature extraction is sharded over the processes and gathered (:meth:`Dist.gather_rows`);
  clustering runs once, on rank 0, and its result is broadcast (:meth:`Dist.on_main`), so labels
  cannot diverge;
* only rank 0 writes files (run directory, logs, checkpoints, plots); the others wait at barriers.

What does not scale: data loading and augmentation of the global batch run on every process (the
price of drawing the 1-process random numbers), and clustering is one process.

The torch.nn.parallel.DistributedDataParallel wrapper is not used: the IICS heads are rebuilt every
stage and the losses need the whole batch, so the gradient all-reduce is done here, once per step,
as one flat bucket per dtype.
"""
from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["Dist", "init", "LOCAL", "world_size_from_env"]


def world_size_from_env() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Dist:
    """The process group of a run (``world_size == 1``: a single process, every method a no-op)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------------------------------- rows

    def shard(self, n: int) -> slice:
        """This process's contiguous share of ``n`` rows (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def forward(self, fn: Callable, *tensors, **kwargs):
        """``fn(*tensors, **kwargs)`` computed by sharing the rows of every tensor (and of tensor
        keyword arguments) over the processes: the gathered (N, ...) result of the whole batch,
        differentiable. Every process must call it with the same global batch."""
        if not self.active:
            return fn(*tensors, **kwargs)
        n = tensors[0].shape[0]
        if n < self.world_size:
            raise RuntimeError(f"a forward over {n} images cannot be shared by {self.world_size} processes "
                               "(every process needs at least one image): use fewer processes or larger batches")
        part = self.shard(n)
        local_kw = {k: v[part] if torch.is_tensor(v) and v.dim() and v.shape[0] == n else v for k, v in kwargs.items()}
        return self.gather_rows(fn(*(t[part] for t in tensors), **local_kw))

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` of every process, concatenated in rank order (local sizes may differ).
        Differentiable: the backward sums each row's gradient over the processes."""
        if not self.active:
            return x
        return _GatherRows.apply(x, self)

    # ---------------------------------------------------------------------------------------- sync

    def average_gradients(self, module: nn.Module) -> None:
        """Replace every parameter gradient by its mean over the processes (missing gradients count
        as zeros, so every process joins the same collectives)."""
        if not self.active:
            return
        import torch.distributed as dist

        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.group)
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0, group=self.group)

    def on_main(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run on rank 0 only, its (picklable) result sent to every process;
        an exception it raises is raised on every process (so none waits for a result that never comes)."""
        if not self.active:
            return fn(*args, **kwargs)
        import torch.distributed as dist

        box = [None]
        if self.is_main:
            try:
                box = [(True, fn(*args, **kwargs))]
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                box = [(False, e)]
        dist.broadcast_object_list(box, src=0, group=self.group)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def copy_module(self, module: nn.Module) -> nn.Module:
        """``copy.deepcopy(module)`` whose layers share this process group (a group cannot be copied)."""
        import copy

        return copy.deepcopy(module, memo={} if self.group is None else {id(self.group): self.group})

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def attach(self, module: nn.Module, device: str) -> nn.Module:
        """Give the AIBN / TNorm layers of ``module`` the process group; on CUDA convert BatchNorm to
        SyncBatchNorm. Returns the (possibly new) module."""
        if not self.active:
            return module
        for m in module.modules():
            if hasattr(m, "process_group") and not isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.process_group = self.group
        has_bn = any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) for m in module.modules())
        if has_bn and str(device).startswith("cuda"):
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module, self.group)
        elif has_bn:
            warnings.warn("torch has no SyncBatchNorm on CPU: the model's BatchNorm layers normalise each "
                          "process's share of the batch, so this run does not equal the 1-process run "
                          "(AIBN and TNorm are synchronised)", stacklevel=2)
        return module


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, d):
        import torch.distributed as dist

        sizes = torch.zeros(d.world_size, dtype=torch.long, device=x.device)
        sizes[d.rank] = x.shape[0]
        dist.all_reduce(sizes, group=d.group)
        sizes = sizes.tolist()
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(d.world_size)]
        dist.all_gather(parts, padded.contiguous(), group=d.group)
        ctx.d, ctx.start, ctx.n = d, sum(sizes[: d.rank]), x.shape[0]
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.d.group)
        return grad[ctx.start: ctx.start + ctx.n], None


LOCAL = Dist()


def init(device: str = "cpu", timeout_s: float = 1800.0) -> Dist:
    """Join the torchrun process group (a no-op returning :data:`LOCAL` outside torchrun).

    NCCL for CUDA devices (each process on ``cuda:LOCAL_RANK``), gloo otherwise. ``timeout_s``
    bounds every collective, so a rank that dies or stalls ends the run with an error instead of a
    hang (rank 0's clustering must finish within it)."""
    world = world_size_from_env()
    if world <= 1:
        return LOCAL
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run without torchrun")
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), group=dist.group.WORLD)


def local_device(device: str) -> str:
    """``cuda`` under torchrun means this process's GPU (``cuda:LOCAL_RANK``)."""
    if str(device) == "cuda" and world_size_from_env() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shutdown(d: Optional[Dist]) -> None:
    if d is not None and d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
