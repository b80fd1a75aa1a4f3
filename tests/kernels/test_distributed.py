"""process_group on the Triton backend: two gloo processes give what one process gets on the
concatenated batch (outputs, input gradients, summed parameter gradients, running buffers).

CPU under TRITON_INTERPRET=1 (inherited by the spawned processes). The split is uneven and rank 0
lacks a camera, so empty local segments and the global segment sizes are exercised.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.utils import assert_verbose_allclose
from timm_reid.layers import AIBN, TNorm

kernels = pytest.importorskip("timm_reid.kernels")
from timm_reid.kernels import _utils  # noqa: E402

if not _utils.INTERPRET:
    pytest.skip("timm_reid.kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

WORLD = 2


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 3, 3, generator=g) * 2 + 1
    dy = torch.randn(5, 4, 3, 3, generator=g)
    camids = torch.tensor([0, 2, 2, 1, 0])
    targets = torch.tensor([1, 0, 1, 2, 2])
    return x, dy, camids, targets


def layers(group=None):
    torch.manual_seed(1)
    aibn = AIBN(4, gate_init=0.3, mix="std", process_group=group, backend="triton")
    normalize = TNorm(4, 3, mode="normalize", process_group=group, backend="triton")
    transform = TNorm(4, 3, process_group=group, backend="triton")
    return aibn, normalize, transform


def forward_backward(mods, x, dy, camids, targets):
    aibn, normalize, transform = mods
    x = x.clone().requires_grad_()
    y = transform(normalize(aibn(x), camids), camids, convert=True, targets=targets)
    y.backward(dy)
    grads = torch.cat([aibn.gate.grad, aibn.weight.grad, aibn.bias.grad, normalize.weight.grad, normalize.bias.grad])
    buffers = torch.cat([b.flatten() for m in mods for b in m.buffers()])
    return y.detach(), x.grad, grads, buffers


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x, dy, camids, targets = batch()
    part = slice(0, 2) if rank == 0 else slice(2, 5)  # rank 0: cameras 0 and 2 only
    y, dx, grads, buffers = forward_backward(layers(dist.group.WORLD), x[part], dy[part], camids[part], targets[part])
    dist.all_reduce(grads)  # what DDP does to parameter gradients (a sum)
    torch.save({"y": y, "dx": dx, "grads": grads, "buffers": buffers}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_whole_batch():
    x, dy, camids, targets = batch()
    y, dx, grads, buffers = forward_backward(layers(), x, dy, camids, targets)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        parts = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(WORLD)]
    assert_verbose_allclose(torch.cat([p["y"] for p in parts]), y, 1e-5, 1e-5, "y")
    assert_verbose_allclose(torch.cat([p["dx"] for p in parts]), dx, 1e-5, 1e-5, "dx")
    for p in parts:
        assert_verbose_allclose(p["grads"], grads, 1e-4, 1e-4, "parameter gradients")
        assert_verbose_allclose(p["buffers"], buffers, 1e-5, 1e-5, "running buffers")
