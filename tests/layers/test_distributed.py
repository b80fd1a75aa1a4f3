"""process_group: two gloo processes give what one process gets on the concatenated batch
(outputs, input gradients, summed parameter gradients, running buffers), on the reference path and
on the Triton kernels (CPU under TRITON_INTERPRET=1, inherited by the spawned processes).

The split is uneven and rank 0 lacks a camera, so empty local segments and the global segment sizes
are exercised.
"""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.utils import assert_verbose_allclose, import_interpreted_kernels
from timm_reid.layers import AIBN, TNorm

WORLD = 2
AIBN_MIX = {"reference": "var", "triton": "std"}  # one backend per mix keeps both covered


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 3, 3, generator=g) * 2 + 1
    dy = torch.randn(6, 4, 3, 3, generator=g)
    camids = torch.tensor([0, 2, 2, 1, 0, 2])
    targets = torch.tensor([1, 0, 1, 2, 2, 0])
    return x, dy, camids, targets


def layers(backend, group=None):
    torch.manual_seed(1)
    kw = dict(process_group=group, backend=backend)
    return (AIBN(4, gate_init=0.3, mix=AIBN_MIX[backend], **kw), TNorm(4, 3, mode="normalize", **kw),
            TNorm(4, 3, **kw))


def forward_backward(mods, x, dy, camids, targets):
    aibn, normalize, transform = mods
    x = x.clone().requires_grad_()
    y = transform(normalize(aibn(x), camids), camids, convert=True, targets=targets)
    y.backward(dy)
    grads = torch.cat([aibn.gate.grad, aibn.weight.grad, aibn.bias.grad, normalize.weight.grad, normalize.bias.grad])
    buffers = torch.cat([b.flatten() for m in mods for b in m.buffers()])
    return y.detach(), x.grad, grads, buffers


def worker(rank, init_file, out_dir, backend):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x, dy, camids, targets = batch()
    part = slice(0, 2) if rank == 0 else slice(2, 6)  # uneven split: rank 0 has cameras 0 and 2 only
    y, dx, grads, buffers = forward_backward(layers(backend, dist.group.WORLD), x[part], dy[part], camids[part],
                                             targets[part])
    dist.all_reduce(grads)  # what DDP does to parameter gradients (a sum)
    torch.save({"y": y, "dx": dx, "grads": grads, "buffers": buffers}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_two_processes_equal_one_process_on_the_whole_batch(backend):
    if backend == "triton":
        import_interpreted_kernels()
    x, dy, camids, targets = batch()
    y, dx, grads, buffers = forward_backward(layers(backend), x, dy, camids, targets)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "init"), tmp, backend), nprocs=WORLD, join=True)
        parts = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(WORLD)]
    assert_verbose_allclose(torch.cat([p["y"] for p in parts]), y, 1e-5, 1e-5, "y")
    assert_verbose_allclose(torch.cat([p["dx"] for p in parts]), dx, 1e-5, 1e-5, "dx")
    for p in parts:
        assert_verbose_allclose(p["grads"], grads, 1e-4, 1e-4, "parameter gradients")
        assert_verbose_allclose(p["buffers"], buffers, 1e-5, 1e-5, "running buffers")
