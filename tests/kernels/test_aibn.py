"""The AIBN Triton kernels against the reference math (CPU, TRITON_INTERPRET=1).

Every comparison runs both implementations on the same input, the same ``grad_output`` and copies
of the same parameters and buffers; the reference is ``timm_reid.layers.functional.aibn``.
Shapes are kept tiny for the interpreter (each launch costs ~0.3 s of Python); the interpreter
config uses BLOCK_L=16, BLOCK_C=4, BLOCK_N=4 and 16-position L-chunks, so C in 5..7, N = 5 and
H*W > 16 exercise several channel blocks, sample blocks and L-splits with ragged edges.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.utils import PARAM_TOL, TOLERANCES, assert_verbose_allclose, import_interpreted_kernels
from timm_reid.layers import functional as F

kernels = import_interpreted_kernels()
from timm_reid.kernels import _utils  # noqa: E402



def make_case(n, c, h, w, *, channels_last, memory, dtype, affine, gate, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (n, h, w, c) if channels_last else (n, c, h, w)
    x = (torch.randn(shape, generator=g) * 2.0 + 0.5).to(dtype)
    if memory == "channels_last" and not channels_last:
        x = x.to(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=g).to(dtype)
    weight = torch.randn(c, generator=g) if affine else None
    bias = torch.randn(c, generator=g) if affine else None
    gate_t = torch.tensor([gate])
    running = (torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5)
    return x, dy, weight, bias, gate_t, running


def run(fn, case, *, training, mix, channels_last, with_running=True):
    x, dy, weight, bias, gate, (rm, rv) = case
    x = x.clone().requires_grad_()
    params = [None if p is None else p.clone().requires_grad_() for p in (weight, bias, gate)]
    rm, rv = (rm.clone(), rv.clone()) if with_running else (None, None)
    y = fn(x, *params, rm, rv, training=training, mix=mix, channels_last=channels_last)
    y.backward(dy)
    grads = [x.grad] + [None if p is None else p.grad for p in params]
    return y.detach(), grads, (rm, rv)


def compare(case, *, training, mix, channels_last, dtype, with_running=True):
    got = run(kernels.aibn, case, training=training, mix=mix, channels_last=channels_last, with_running=with_running)
    ref = run(F.aibn, case, training=training, mix=mix, channels_last=channels_last, with_running=with_running)
    atol, rtol = TOLERANCES[dtype]
    assert got[0].dtype == dtype and got[0].stride() == case[0].stride()
    assert_verbose_allclose(got[0], ref[0], atol, rtol, "y")
    # dx: errors scale with the largest gradient (rstd^3 terms when an instance variance is tiny)
    assert_verbose_allclose(got[1][0], ref[1][0], atol * max(1.0, ref[1][0].abs().max().item()), rtol, "dx")
    for name, a, b in zip(("dweight", "dbias", "dgate"), got[1][1:], ref[1][1:]):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_verbose_allclose(a, b, PARAM_TOL[0] * max(1.0, b.abs().max().item()), PARAM_TOL[1], name)
    for name, a, b in zip(("running_mean", "running_var"), got[2], ref[2]):
        if a is not None:
            assert_verbose_allclose(a, b, 1e-6, 1e-6, name)


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs seconds
          suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 7),  # odd channel counts: ragged channel blocks
    hw=st.sampled_from([(1, 2), (3, 1), (3, 5), (2, 7), (4, 6), (5, 5)]),  # L = 2..25, prime and ragged
    channels_last=st.booleans(),
    memory=st.sampled_from(["contiguous", "channels_last"]),
    training=st.booleans(),
    mix=st.sampled_from(["var", "std"]),
    affine=st.booleans(),
    gate=st.sampled_from([-0.25, 0.0, 0.1, 0.6, 1.0, 1.5]),  # outside [0, 1]: zero gate gradient
    chunk=st.sampled_from([None, 5]),  # None: plan of the interpreter (16); 5: many uneven splits
)
# the gate's bounds (torch.clamp passes no gradient at exactly 0 or 1), N = 1 in eval, many splits
@example(n=1, c=3, hw=(3, 5), channels_last=False, memory="contiguous", training=False, mix="var",
         affine=True, gate=0.0, chunk=None)
@example(n=5, c=7, hw=(4, 6), channels_last=True, memory="contiguous", training=True, mix="std",
         affine=True, gate=1.0, chunk=5)
def test_aibn_matches_reference(n, c, hw, channels_last, memory, training, mix, affine, gate, chunk):
    _utils.FORCE_CHUNK = chunk
    try:
        case = make_case(n, c, *hw, channels_last=channels_last, memory=memory, dtype=torch.float32,
                         affine=affine, gate=gate, seed=n * 100 + c)
        compare(case, training=training, mix=mix, channels_last=channels_last, dtype=torch.float32)
    finally:
        _utils.FORCE_CHUNK = None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_aibn_half_dtypes(dtype, training):
    # N=5, C=7, 3x7: two sample blocks, two channel blocks, two L-splits (one ragged)
    case = make_case(5, 7, 3, 7, channels_last=not training, memory="contiguous", dtype=dtype,
                     affine=True, gate=0.3, seed=1)
    compare(case, training=training, mix="var", channels_last=not training, dtype=dtype)


def test_aibn_eval_single_sample_and_no_running_update():
    case = make_case(1, 5, 4, 5, channels_last=False, memory="contiguous", dtype=torch.float32,
                     affine=True, gate=0.5, seed=2)
    compare(case, training=False, mix="var", channels_last=False, dtype=torch.float32)
    # training without buffers: batch statistics, nothing to update
    compare(case, training=True, mix="std", channels_last=False, dtype=torch.float32, with_running=False)


def test_aibn_welford_survives_a_large_offset():
    # mean 1e3, std 1: in fp32, E[x^2] - E[x]^2 cancels ~1e6 against ~1e6 with an ulp of 0.06, a
    # ~5% error on a variance of 1 (~3% on y); Welford/Chan keeps y within ~1e-4 of float64.
    g = torch.Generator().manual_seed(3)
    x = (1e3 + torch.randn(3, 5, 4, 5, generator=g, dtype=torch.float64)).float()
    gate = torch.tensor([0.5])
    y = kernels.aibn(x, None, None, gate, torch.zeros(5), torch.ones(5), training=True)
    ref = F.aibn(x.double(), None, None, gate.double(), None, None, training=True)
    assert_verbose_allclose(y, ref.float(), 2e-3, 0.0, "y at large offset")


def test_aibn_is_deterministic():
    case = make_case(5, 7, 4, 6, channels_last=True, memory="contiguous", dtype=torch.float32,
                     affine=True, gate=0.4, seed=4)
    first = run(kernels.aibn, case, training=True, mix="var", channels_last=True)
    second = run(kernels.aibn, case, training=True, mix="var", channels_last=True)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1] + list(first[2]), second[1] + list(second[2])):
        assert torch.equal(a, b)


def test_aibn_errors_name_the_fix():
    x = torch.randn(2, 3, 4, 4)
    gate = torch.tensor([0.1])
    with pytest.raises(TypeError, match="backend='reference'"):
        kernels.aibn(x.double(), None, None, gate, None, None, training=True)
    with pytest.raises(ValueError, match="H\\*W >= 2"):
        kernels.aibn(x[:, :, :1, :1], None, None, gate, None, None, training=True)
    with pytest.raises(ValueError, match="mix"):
        kernels.aibn(x, None, None, gate, None, None, training=True, mix="mean")
    with pytest.raises(ValueError, match="eval mode needs running"):
        kernels.aibn(x, None, None, gate, None, None, training=False)
