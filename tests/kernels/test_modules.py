"""The AIBN and TNorm modules on the Triton backend equal the reference backend, eager and compiled.

Runs on CPU under TRITON_INTERPRET=1: ``backend="triton"`` then runs the Triton kernels in the
interpreter. A small stack of layers is trained for a few SGD steps on both backends (outputs,
parameter values, gradients and running buffers compared after each step), then compared in eval.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

import torch
from torch import nn

from tests.utils import assert_verbose_allclose, import_interpreted_kernels
from timm_reid.layers import AIBN, TNorm, use_backend

kernels = import_interpreted_kernels()

TOL = (2e-5, 2e-5)  # fp32 on both sides; a few steps of accumulated summation-order differences


class Stack(nn.Module):
    """AIBN on NCHW and on an NHWC view, TNorm in both modes: every kernel path of the layers."""

    def __init__(self, channels: int = 5, cameras: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.aibn = AIBN(channels, gate_init=0.4)
        self.aibn_nhwc = AIBN(channels, mix="std", channels_last=True)
        self.normalize = TNorm(channels, cameras, mode="normalize")
        self.transform = TNorm(channels, cameras)

    def forward(self, x, camids, targets):
        x = self.aibn(self.conv(x))
        x = self.aibn_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.normalize(x, camids)
        return self.transform(x, camids, convert=True, targets=targets)


def make_pair():
    torch.manual_seed(0)
    ref = Stack()
    tri = Stack()
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def batch(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(4, 5, 3, 5, generator=g)
    camids = torch.tensor([[0, 2, 2, 0], [1, 1, 1, 1]][step % 2])  # mixed cameras / one camera
    targets = torch.tensor([1, 0, 2, 1])
    return x, camids, targets


def step(model, backend, x, camids, targets, opt):
    with use_backend(backend):
        opt.zero_grad()
        y = model(x, camids, targets)
        y.square().mean().backward()
        opt.step()
    return y.detach()


def assert_same_state(tri, ref, what):
    for (name, a), (_, b) in zip(tri.named_parameters(), ref.named_parameters()):
        assert_verbose_allclose(a.detach(), b.detach(), *TOL, f"{what}: {name}")
        assert_verbose_allclose(a.grad, b.grad, *TOL, f"{what}: grad of {name}")
    for (name, a), (_, b) in zip(tri.named_buffers(), ref.named_buffers()):
        assert_verbose_allclose(a, b, *TOL, f"{what}: {name}")


def test_triton_backend_equals_reference_backend():
    ref, tri = make_pair()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, tri)]
    for i in range(2):
        x, camids, targets = batch(i)
        y_ref = step(ref, "reference", x, camids, targets, opts[0])
        y_tri = step(tri, "triton", x, camids, targets, opts[1])
        assert_verbose_allclose(y_tri, y_ref, *TOL, f"step {i}: output")
        assert_same_state(tri, ref, f"step {i}")
    ref.eval(), tri.eval()
    x, camids, targets = batch(5)
    with torch.no_grad():
        with use_backend("reference"):
            y_ref = ref(x, camids, targets)
        with use_backend("triton"):
            y_tri = tri(x, camids, targets)
    assert_verbose_allclose(y_tri, y_ref, *TOL, "eval output")


def test_compiled_triton_backend_equals_eager():
    """torch.compile (Inductor) of a model routed through the kernel ops.

    Under the interpreter the ops are opaque custom ops with fake implementations (see
    ``timm_reid.kernels._utils.define_op``); on GPU builds they are ``triton_op``s whose kernels
    Inductor sees. Compilation dominates this test's time, so it compiles once.
    """
    eager, compiled_model = make_pair()
    compiled = torch.compile(compiled_model, backend=os.environ.get("TIMM_REID_TEST_COMPILE_BACKEND", "inductor"))
    x, camids, targets = batch(0)
    with use_backend("triton"):
        outs = []
        for model in (eager, compiled):
            xx = x.clone().requires_grad_()
            y = model(xx, camids, targets)
            y.square().mean().backward()
            outs.append((y.detach(), xx.grad))
    assert_verbose_allclose(outs[1][0], outs[0][0], 1e-5, 1e-5, "compiled output")
    assert_verbose_allclose(outs[1][1], outs[0][1], 1e-5, 1e-5, "compiled input gradient")
    assert_same_state(compiled_model, eager, "compiled")
