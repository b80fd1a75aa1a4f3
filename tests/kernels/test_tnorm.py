"""The TNorm Triton kernels against the reference math (CPU, TRITON_INTERPRET=1).

Reference: ``timm_reid.layers.functional.tnorm`` (docs/DESIGN.md 3.2), run on the same input,
``grad_output``, parameters and copies of the running buffers. Camera layouts include one camera,
several, and cameras absent from the batch (their running rows must not move).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from tests.utils import PARAM_TOL, TOLERANCES, assert_verbose_allclose, import_interpreted_kernels
from timm_reid.layers import functional as F

kernels = import_interpreted_kernels()



def make_case(n, c, h, w, d, cams, tgts, *, channels_last, dtype, affine, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (n, h, w, c) if channels_last else (n, c, h, w)
    x = (torch.randn(shape, generator=g) * 1.5 - 0.3).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    rm = torch.randn(d, c, generator=g)
    rv = torch.rand(d, c, generator=g) + 0.5
    weight = torch.randn(c, generator=g) if affine else None
    bias = torch.randn(c, generator=g) if affine else None
    camids = None if cams is None else torch.tensor(cams, dtype=torch.int64)
    targets = None if tgts is None else torch.tensor(tgts, dtype=torch.int64)
    return x, dy, rm, rv, weight, bias, camids, targets


def run(fn, case, **kw):
    x, dy, rm, rv, weight, bias, camids, targets = case
    x = x.clone().requires_grad_()
    params = [None if p is None else p.clone().requires_grad_() for p in (weight, bias)]
    rm, rv = rm.clone(), rv.clone()
    y = fn(x, rm, rv, camids=camids, targets=targets, weight=params[0], bias=params[1], **kw)
    if y.requires_grad:
        y.backward(dy)
    return y.detach(), [x.grad] + [None if p is None else p.grad for p in params], (rm, rv)


def compare(case, dtype, **kw):
    got = run(kernels.tnorm, case, **kw)
    ref = run(F.tnorm, case, **kw)
    atol, rtol = TOLERANCES[dtype]
    assert got[0].dtype == dtype
    assert_verbose_allclose(got[0], ref[0], atol, rtol, "y")
    assert (got[1][0] is None) == (ref[1][0] is None), "dx presence"
    if ref[1][0] is not None:
        scale = max(1.0, ref[1][0].abs().max().item())  # errors scale with the largest gradient
        assert_verbose_allclose(got[1][0], ref[1][0], atol * scale, rtol, "dx")
    for name, a, b in zip(("dweight", "dbias"), got[1][1:], ref[1][1:]):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_verbose_allclose(a, b, PARAM_TOL[0] * max(1.0, b.abs().max().item()), PARAM_TOL[1], name)
    for name, a, b in zip(("running_mean", "running_var"), got[2], ref[2]):
        assert_verbose_allclose(a, b, 1e-6, 1e-6, name)
    return got


@st.composite
def camera_layouts(draw):
    n = draw(st.integers(1, 5))
    d = draw(st.integers(1, 4))
    # cameras drawn from a subset: with d > 1 some cameras are usually absent from the batch
    cams = draw(st.one_of(st.none(), st.lists(st.integers(0, d - 1), min_size=n, max_size=n)))
    tgts = draw(st.lists(st.integers(0, d - 1), min_size=n, max_size=n))
    return n, d, cams, tgts


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs seconds
          suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=camera_layouts(),
    c=st.integers(1, 7),
    hw=st.sampled_from([(1, 2), (3, 1), (3, 5), (2, 7), (4, 6)]),
    channels_last=st.booleans(),
    training=st.booleans(),
    convert=st.booleans(),
    mode=st.sampled_from(["transform", "normalize"]),
    affine=st.booleans(),
)
def test_tnorm_matches_reference(layout, c, hw, channels_last, training, convert, mode, affine):
    n, d, cams, tgts = layout
    if mode == "normalize":
        assume(not (training and cams is None))  # an error on both sides (tested below)
    else:
        assume(not (convert and not training and cams is None))
        affine = False
    case = make_case(n, c, *hw, d, cams, tgts, channels_last=channels_last, dtype=torch.float32,
                     affine=affine, seed=n * 10 + c)
    compare(case, torch.float32, training=training, convert=convert, mode=mode, channels_last=channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode,training", [("transform", True), ("transform", False), ("normalize", True)])
def test_tnorm_half_dtypes(dtype, mode, training):
    # N=5 (two sample blocks), C=7 (two channel blocks), 3x7 (two L-splits); camera 1 of 4 absent
    case = make_case(5, 7, 3, 7, 4, [0, 2, 3, 0, 2], [1, 1, 0, 3, 2], channels_last=mode == "normalize",
                     dtype=dtype, affine=mode == "normalize", seed=7)
    compare(case, dtype, training=training, convert=mode == "transform", mode=mode,
            channels_last=mode == "normalize")


def test_tnorm_absent_cameras_keep_their_rows():
    case = make_case(4, 5, 3, 5, 4, [3, 1, 3, 1], [0, 0, 2, 2], channels_last=False, dtype=torch.float32,
                     affine=False, seed=8)
    y, _, (rm, rv) = run(kernels.tnorm, case, training=True, convert=True)
    for row in (0, 2):
        assert torch.equal(rm[row], case[2][row]) and torch.equal(rv[row], case[3][row])
    for row in (1, 3):
        assert not torch.equal(rm[row], case[2][row])


def test_tnorm_identity_returns_the_input():
    case = make_case(3, 5, 3, 5, 2, [0, 1, 1], None, channels_last=False, dtype=torch.float32, affine=False, seed=9)
    x, _, rm, rv, *_ = case
    assert kernels.tnorm(x, rm.clone(), rv.clone(), camids=case[6], training=True, convert=False) is x
    assert kernels.tnorm(x, rm.clone(), rv.clone(), training=False, convert=False) is x


def test_tnorm_is_deterministic():
    case = make_case(5, 7, 4, 6, 3, [0, 2, 2, 1, 0], [1, 0, 2, 2, 1], channels_last=True, dtype=torch.float32,
                     affine=True, seed=10)
    # normalize mode: segmented statistics forward and the segmented backward reductions
    first = run(kernels.tnorm, case, training=True, convert=False, mode="normalize", channels_last=True)
    second = run(kernels.tnorm, case, training=True, convert=False, mode="normalize", channels_last=True)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1] + list(first[2]), second[1] + list(second[2])):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "dtype,layout",
    [(torch.float32, "nchw"), (torch.float32, "channels_last_memory"), (torch.float16, "nhwc"),
     (torch.bfloat16, "nchw")],
)
def test_tnorm_fanout_matches_per_target_conversion(dtype, layout):
    g = torch.Generator().manual_seed(11)
    n, c, h, w, d = 3, 5, 3, 5, 4
    channels_last = layout == "nhwc"
    x = torch.randn((n, h, w, c) if channels_last else (n, c, h, w), generator=g).to(dtype)
    if layout == "channels_last_memory":
        x = x.to(memory_format=torch.channels_last)
    rm, rv = torch.randn(d, c, generator=g), torch.rand(d, c, generator=g) + 0.5
    camids = torch.tensor([2, 0, 2])
    out = kernels.tnorm_fanout(x, rm, rv, camids, channels_last=channels_last)
    assert out.shape == (d,) + tuple(x.shape) and out.dtype == dtype
    if layout == "channels_last_memory":
        assert out[0].is_contiguous(memory_format=torch.channels_last)
    atol, rtol = TOLERANCES[dtype]
    for t in range(d):
        ref = F.tnorm(x, rm.clone(), rv.clone(), camids=camids, targets=torch.full((n,), t), training=False,
                      convert=True, channels_last=channels_last)
        assert_verbose_allclose(out[t], ref, atol, rtol, f"target {t}")


def test_tnorm_errors_name_the_fix():
    x = torch.randn(2, 3, 4, 4)
    rm, rv = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="normalize' in training needs camera ids"):
        kernels.tnorm(x, rm, rv, training=True, convert=False, mode="normalize")
    with pytest.raises(ValueError, match="needs target camera ids"):
        kernels.tnorm(x, rm, rv, camids=torch.tensor([0, 1]), training=True, convert=True)
    with pytest.raises(ValueError, match="needs the source camera ids"):
        kernels.tnorm(x, rm, rv, targets=torch.tensor([0, 1]), training=False, convert=True)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        kernels.tnorm(x, rm, rv, camids=torch.tensor([0, 2]), training=True, convert=False)
