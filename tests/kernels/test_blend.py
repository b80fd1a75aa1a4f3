"""The fused blend op (``timm_reid.kernels.blend``, ``BlendedAIBN`` on the Triton backend) against the
two-norm composition of ``tests/layers/test_blend.py`` (CPU, TRITON_INTERPRET=1).

The composition (``composed``: ``F.layer_norm`` / ``F.batch_norm`` + the reference AIBN + the
straight-through blend, differentiated by autograd) runs in float64 on a copy of the layer, with
the same (dtype-rounded) input and ``grad_output``; the Triton layer runs in the tested dtype.
Shapes are tiny for the interpreter: C = 6 (LayerNorm tiles of 8 channels with 2 masked, BatchNorm
channel blocks of 4), H*W = 15 (LayerNorm: tiles of 4 positions, chunks of 8, so two ragged
L-splits; BatchNorm: the 16-position chunks of the AIBN kernels), N = 5 (two sample blocks of 4).
"""
from __future__ import annotations

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.layers.test_blend import composed
from tests.utils import PARAM_TOL, TOLERANCES, assert_verbose_allclose, import_interpreted_kernels
from timm_reid.layers import BlendedAIBN

kernels = import_interpreted_kernels()
from timm_reid.kernels import _blend  # noqa: E402

# (base, channels_last layer, NCHW input stored channels-last in memory), as tests/layers/test_blend.py
CASES = [("batchnorm", False, False), ("batchnorm", False, True), ("layernorm", False, False),
         ("layernorm", False, True), ("layernorm", True, False)]


def make_layer(c, *, base, channels_last, mix, blend, training, seed=7, gate=0.35):
    gen = torch.Generator().manual_seed(seed)
    layer = BlendedAIBN(c, base=base, channels_last=channels_last, mix=mix, gate_init=0.35, backend="triton")
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(c, generator=gen))
        layer.running_mean.copy_(torch.randn(c, generator=gen))
        layer.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        layer.blend.fill_(blend)
        layer.gate.fill_(gate)
    return layer.train(training)


def make_input(shape, dtype, nhwc_memory, seed=11):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 1).to(dtype)
    if nhwc_memory:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=gen).to(dtype)
    return x, dy


def check_against_composition(layer, x, dy, dtype):
    """Forward, every gradient and the running statistics of the Triton layer against ``composed``
    in float64 (from the same starting buffers)."""
    ref_layer = copy.deepcopy(layer).double()
    rm0, rv0 = ref_layer.running_mean.clone(), ref_layer.running_var.clone()
    xt = x.clone().requires_grad_()
    y = layer(xt)
    y.backward(dy)
    xr = x.double().requires_grad_()
    want, params, rm, rv = composed(ref_layer, xr, rm0, rv0, layer.training)
    want.backward(dy.double())

    atol, rtol = TOLERANCES[dtype]
    assert y.dtype == dtype and y.stride() == x.stride()
    assert_verbose_allclose(y, want, atol, rtol, "y")
    assert xt.grad.dtype == dtype and xt.grad.stride() == x.stride()
    assert_verbose_allclose(xt.grad, xr.grad, atol * max(1.0, xr.grad.abs().max().item()), rtol, "dx")
    for name in ("weight", "bias", "gate", "blend"):
        got, ref = getattr(layer, name).grad, params[name].grad
        assert got is not None and got.dtype == torch.float32, f"d{name}"
        assert_verbose_allclose(got, ref, PARAM_TOL[0] * max(1.0, ref.abs().max().item()), PARAM_TOL[1], f"d{name}")
    assert_verbose_allclose(layer.running_mean, rm, 1e-6, 1e-6, "running_mean")
    assert_verbose_allclose(layer.running_var, rv, 1e-6, 1e-6, "running_var")
    if not layer.training:
        assert torch.equal(layer.running_mean, rm0.float()) and torch.equal(layer.running_var, rv0.float())
    return y


def shape_of(n, c, h, w, channels_last):
    return (n, h, w, c) if channels_last else (n, c, h, w)


@pytest.mark.parametrize("base, channels_last, nhwc_memory", CASES)
@pytest.mark.parametrize("blend", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_blend_matches_the_composition(base, channels_last, nhwc_memory, blend, training):
    layer = make_layer(6, base=base, channels_last=channels_last, mix="var", blend=blend, training=training)
    x, dy = make_input(shape_of(5, 6, 3, 5, channels_last), torch.float32, nhwc_memory)
    check_against_composition(layer, x, dy, torch.float32)


# blend 1.4: b = 1 in value, the gradient of the raw parameter straight through (as the layer)
@pytest.mark.parametrize("base, channels_last, nhwc_memory", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_blend_mix_std_and_blend_beyond_one(base, channels_last, nhwc_memory, training):
    layer = make_layer(6, base=base, channels_last=channels_last, mix="std", blend=1.4, training=training)
    x, dy = make_input(shape_of(5, 6, 3, 5, channels_last), torch.float32, nhwc_memory)
    check_against_composition(layer, x, dy, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("base, channels_last, nhwc_memory", [("batchnorm", False, True), ("layernorm", True, False)])
@pytest.mark.parametrize("training", [True, False])
def test_blend_half_dtypes(dtype, base, channels_last, nhwc_memory, training):
    layer = make_layer(6, base=base, channels_last=channels_last, mix="var", blend=0.3, training=training)
    x, dy = make_input(shape_of(5, 6, 3, 5, channels_last), dtype, nhwc_memory)
    check_against_composition(layer, x, dy, dtype)


@pytest.mark.parametrize("base, channels_last", [("batchnorm", False), ("layernorm", False), ("layernorm", True)])
@pytest.mark.parametrize("training", [True, False])
def test_blend_at_zero_is_the_base_norm(base, channels_last, training):
    layer = make_layer(6, base=base, channels_last=channels_last, mix="var", blend=0.0, training=training)
    x, dy = make_input(shape_of(3, 6, 4, 5, channels_last), torch.float32, False)
    x.requires_grad_()
    y = layer(x)
    xb = x.detach().clone().requires_grad_()
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()
    if base == "batchnorm":
        want = F.batch_norm(xb, None if training else layer.running_mean, None if training else layer.running_var,
                            w, b, training=training, eps=layer.eps)
    elif channels_last:
        want = F.layer_norm(xb, (6,), w, b, layer.eps)
    else:
        want = F.layer_norm(xb.permute(0, 2, 3, 1), (6,), w, b, layer.eps).permute(0, 3, 1, 2)
    assert_verbose_allclose(y, want, *TOLERANCES[torch.float32], "y at b = 0")
    y.backward(dy)
    want.backward(dy)
    assert_verbose_allclose(x.grad, xb.grad, *TOLERANCES[torch.float32], "dx at b = 0")
    assert_verbose_allclose(layer.weight.grad, w.grad, *PARAM_TOL, "dweight at b = 0")
    assert_verbose_allclose(layer.bias.grad, b.grad, *PARAM_TOL, "dbias at b = 0")
    assert torch.equal(layer.gate.grad, torch.zeros(1))  # AIBN unused at b = 0


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs a second or more
          suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 9),  # LayerNorm tiles of 1..16 channels, ragged BatchNorm channel blocks
    hw=st.sampled_from([(1, 2), (3, 1), (2, 7), (4, 5), (5, 5)]),  # L = 2..25: one to four LayerNorm splits
    case=st.sampled_from(CASES),
    training=st.booleans(),
    mix=st.sampled_from(["var", "std"]),
    blend=st.sampled_from([-0.2, 0.0, 0.45, 1.0]),
    gate=st.sampled_from([-0.25, 0.0, 0.6, 1.0]),  # outside [0, 1] and at the bounds: zero gate gradient
)
@example(n=1, c=3, hw=(1, 2), case=("layernorm", False, False), training=False, mix="var", blend=0.45, gate=0.6)
def test_blend_matches_the_composition_over_small_shapes(n, c, hw, case, training, mix, blend, gate):
    base, channels_last, nhwc_memory = case
    layer = make_layer(c, base=base, channels_last=channels_last, mix=mix, blend=blend, training=training,
                       seed=n * 10 + c, gate=gate)
    x, dy = make_input(shape_of(n, c, *hw, channels_last), torch.float32, nhwc_memory, seed=c)
    check_against_composition(layer, x, dy, torch.float32)


@pytest.mark.parametrize("base, channels_last", [("batchnorm", False), ("layernorm", True)])
def test_blend_survives_a_large_offset(base, channels_last):
    # mean 1e3, std 1: E[x^2] - E[x]^2 in fp32 would be off by ~5%; Welford/Chan (AIBN, BatchNorm)
    # and the exact two-pass of the LayerNorm tile keep y at the fp32 resolution of the means
    # (ulp(1e3) = 6e-5); both branches are applied centred on their own means.
    layer = make_layer(6, base=base, channels_last=channels_last, mix="var", blend=0.3, training=True)
    x, dy = make_input(shape_of(5, 6, 3, 5, channels_last), torch.float32, False)
    x = (x.double() + 1e3).float()
    ref_layer = copy.deepcopy(layer).double()
    y = layer(x)
    want = composed(ref_layer, x.double(), ref_layer.running_mean.clone(), ref_layer.running_var.clone(), True)[0]
    assert_verbose_allclose(y, want, 2e-4, 0.0, "y at large offset")


def test_wide_layernorm_falls_back_to_the_composition(monkeypatch):
    calls = []
    monkeypatch.setattr(_blend, "MAX_LAYERNORM_C", 4)
    monkeypatch.setattr(_blend, "blend_forward", lambda *a: calls.append(a))  # must not be reached
    layer = make_layer(6, base="layernorm", channels_last=True, mix="var", blend=0.3, training=True)
    x, dy = make_input(shape_of(5, 6, 3, 5, True), torch.float32, False)
    check_against_composition(layer, x, dy, torch.float32)
    assert not calls


def test_layer_dispatch_uses_the_fused_op_and_not_with_a_process_group(monkeypatch):
    calls = []
    real = _blend.blend_forward
    monkeypatch.setattr(_blend, "blend_forward", lambda *a: calls.append(1) or real(*a))
    layer = make_layer(6, base="batchnorm", channels_last=False, mix="var", blend=0.3, training=False)
    x, _ = make_input(shape_of(2, 6, 3, 5, False), torch.float32, False)
    fused = layer(x)
    assert calls == [1]
    layer.process_group = object()  # eval: the composition (AIBN kernels ignore the group in eval)
    composition = layer(x)
    assert calls == [1]
    assert_verbose_allclose(fused, composition, *TOLERANCES[torch.float32], "fused vs composition")


def test_blend_is_deterministic():
    layer = make_layer(6, base="layernorm", channels_last=True, mix="var", blend=0.3, training=True)
    x, dy = make_input(shape_of(5, 6, 3, 5, True), torch.float32, False)
    results = []
    for _ in range(2):
        lay = copy.deepcopy(layer)
        xt = x.clone().requires_grad_()
        y = lay(xt)
        y.backward(dy)
        results.append([y, xt.grad, lay.running_var] + [p.grad for p in lay.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_blend_errors_name_the_fix():
    x = torch.randn(2, 3, 4, 4)
    one = torch.tensor([0.1])
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="base must be one of"):
        kernels.blend(x, None, None, one, one, rm, rv, base="groupnorm", training=True)
    with pytest.raises(TypeError, match="backend='reference'"):
        kernels.blend(x.double(), None, None, one, one, rm, rv, base="layernorm", training=True)
    with pytest.raises(ValueError, match="H\\*W >= 2"):
        kernels.blend(x[:, :, :1, :1], None, None, one, one, rm, rv, base="batchnorm", training=True)
    with pytest.raises(ValueError, match="mix"):
        kernels.blend(x, None, None, one, one, rm, rv, base="layernorm", training=True, mix="mean")
    with pytest.raises(ValueError, match="eval mode needs running"):
        kernels.blend(x, None, None, one, one, None, None, base="batchnorm", training=False)
    with pytest.raises(ValueError, match="blend must be a tensor of one element"):
        kernels.blend(x, None, None, one, torch.zeros(3), rm, rv, base="layernorm", training=True)
    with pytest.raises(ValueError, match="weight must have C = 3"):
        kernels.blend(x, torch.ones(4), None, one, one, rm, rv, base="layernorm", training=True)


def test_blend_without_affine_matches_the_composition():
    """weight = bias = None (the entry allows it; the layer always has an affine): as weight 1, bias 0."""
    x, dy = make_input(shape_of(4, 5, 3, 5, False), torch.float32, True)
    for base in ("layernorm", "batchnorm"):
        gate, blend = torch.tensor([0.4]), torch.tensor([0.6])
        w, b = torch.ones(5, requires_grad=True), torch.zeros(5, requires_grad=True)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = kernels.blend(xa, None, None, gate, blend, torch.zeros(5), torch.ones(5), base=base, training=True)
        want = kernels.blend(xb, w, b, gate, blend, torch.zeros(5), torch.ones(5), base=base, training=True)
        assert_verbose_allclose(y, want, *TOLERANCES[torch.float32], f"{base} y")
        y.backward(dy)
        want.backward(dy)
        assert_verbose_allclose(xa.grad, xb.grad, *TOLERANCES[torch.float32], f"{base} dx")


@pytest.mark.parametrize("base", ["layernorm", "batchnorm"])
def test_compiled_blend_equals_eager(base):
    """torch.compile through the op: under the interpreter an opaque custom op whose fake
    implementation gives the shapes (``aot_eager``: tracing, fake tensors and the registered autograd,
    without Inductor's code generation, which test_modules.py covers for the other ops)."""
    layer = make_layer(6, base=base, channels_last=False, mix="var", blend=0.3, training=True)
    twin = copy.deepcopy(layer)
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    x, dy = make_input(shape_of(3, 6, 3, 5, False), torch.float32, True)
    outs = []
    for model in (layer, compiled):
        xx = x.clone().requires_grad_()
        y = model(xx)
        y.backward(dy)
        outs.append((y.detach(), xx.grad))
    assert_verbose_allclose(outs[1][0], outs[0][0], 1e-6, 1e-6, "compiled output")
    assert_verbose_allclose(outs[1][1], outs[0][1], 1e-6, 1e-6, "compiled input gradient")
    for (name, a), (_, b) in zip(twin.named_parameters(), layer.named_parameters()):
        assert_verbose_allclose(a.grad, b.grad, 1e-6, 1e-6, f"grad of {name}")
    for (name, a), (_, b) in zip(twin.named_buffers(), layer.named_buffers()):
        assert_verbose_allclose(a, b, 1e-6, 1e-6, name)
