"""AIBN against independent formulas (docs/DESIGN.md 3.1), written out here sample by sample."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from tests.utils import TOLERANCES, assert_verbose_allclose
from timm_reid.layers import AIBN, functional as F

EPS = 1e-5


def independent_aibn(x, weight, bias, gate, running_mean, running_var, training, mix="var"):
    """docs/DESIGN.md 3.1 in float64 with explicit loops: the raw formulas, not the library's forms."""
    x = x.double()
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    length = flat.shape[-1]
    mu_in = flat.sum(-1) / length
    var_in = ((flat - mu_in[..., None]) ** 2).sum(-1) / (length - 1)
    if training:
        mu_bn = mu_in.mean(0)
        var_bn = (var_in + mu_in**2).mean(0) - mu_bn**2
    else:
        mu_bn, var_bn = running_mean.double(), running_var.double()
    w = min(max(float(gate), 0.0), 1.0)
    mu = (1 - w) * mu_in + w * mu_bn
    if mix == "var":
        var = (1 - w) * var_in + w * var_bn
    else:
        var = ((1 - w) * var_in.sqrt() + w * var_bn.sqrt()) ** 2
    y = (x - mu[..., None, None]) / (var[..., None, None] + EPS).sqrt()
    return y * weight.double()[:, None, None] + bias.double()[:, None, None], mu_bn, var_bn


def make_layer(c, mix="var", gate=0.3, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = AIBN(c, mix=mix, channels_last=channels_last)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(c, generator=g))
        layer.bias.copy_(torch.randn(c, generator=g))
        layer.gate.fill_(gate)
        layer.running_mean.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return layer


shapes = st.tuples(
    st.integers(1, 5), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)
).filter(lambda s: s[2] * s[3] >= 2)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    mix=st.sampled_from(["var", "std"]),
    training=st.booleans(),
    gate=st.sampled_from([-0.5, 0.0, 0.1, 0.7, 1.0, 1.5]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_values_match_independent_formula(shape, mix, training, gate, dtype):
    n, c, h, w = shape
    layer = make_layer(c, mix, gate).train(training)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(n * 31 + c)) * 2 + 1).to(dtype)
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    y = layer(x)
    expected, mu_bn, var_bn = independent_aibn(x, layer.weight, layer.bias, gate, rm, rv, training, mix)
    assert y.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    assert_verbose_allclose(y, expected, atol * 10, rtol * 10, "y")
    if training:
        assert_verbose_allclose(layer.running_mean, 0.9 * rm.double() + 0.1 * mu_bn, 1e-5, 1e-5, "running_mean")
        assert_verbose_allclose(layer.running_var, 0.9 * rv.double() + 0.1 * var_bn, 1e-5, 1e-4, "running_var")
    else:
        assert torch.equal(layer.running_mean, rm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mix", ["var", "std"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_reference_autograd(dtype, mix, training):
    """The analytic backward against autograd through the reference math, one shared dy."""
    torch.manual_seed(1)
    layer = make_layer(7, mix, 0.4).train(training)
    ref = make_layer(7, mix, 0.4).train(training)
    x = torch.randn(5, 7, 3, 5).to(dtype)
    dy = torch.randn(5, 7, 3, 5).to(dtype)
    xa, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    layer(xa).backward(dy)
    params = [p.detach().double().requires_grad_() for p in (ref.weight, ref.bias, ref.gate)]
    y_ref = F.aibn(xr, *params, ref.running_mean.double(), ref.running_var.double(), training=training, mix=mix)
    y_ref.backward(dy.double())
    atol, rtol = TOLERANCES[dtype]
    scale = 20 if dtype != torch.float32 else 10
    assert_verbose_allclose(xa.grad, xr.grad, atol * scale, rtol * scale, "dx")
    for name, p, q in zip(("weight", "bias", "gate"), (layer.weight, layer.bias, layer.gate), params):
        assert_verbose_allclose(p.grad, q.grad, atol * scale * 10, rtol * scale, f"d{name}")


@pytest.mark.parametrize("mix", ["var", "std"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(mix, training):
    torch.manual_seed(2)
    layer = make_layer(3, mix, 0.35).double().train(training)
    x = torch.randn(3, 3, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias, gate):
        from timm_reid.layers._autograd import adaptive_norm

        kw = {} if training else {"eval_mean": layer.running_mean, "eval_var": layer.running_var}
        return adaptive_norm(x, weight, bias, gate, mix=mix, **kw)[0]

    inputs = (x, layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_(),
              layer.gate.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs)


def test_gate_clamped_with_zero_gradient_outside_unit_interval():
    x = torch.randn(4, 3, 4, 4)
    # At exactly 0 and 1 torch.clamp's gradient (the reference's) is zero as well.
    for value, expect_zero in ((-0.2, True), (1.3, True), (0.0, True), (1.0, True), (0.5, False)):
        layer = make_layer(3, gate=value).train()
        layer(x).pow(2).sum().backward()
        assert (layer.gate.grad.abs() == 0).item() == expect_zero, value
    # Clamped: a gate of 1.3 behaves as 1.0, and -0.2 as 0.0.
    for raw, clamped in ((1.3, 1.0), (-0.2, 0.0)):
        a, b = make_layer(3, gate=raw).train(), make_layer(3, gate=clamped).train()
        torch.testing.assert_close(a(x), b(x))
    assert make_layer(3, gate=1.3).gate.item() == pytest.approx(1.3)  # the parameter is not clipped


def test_gate_one_in_eval_is_batchnorm_and_zero_is_instancenorm():
    torch.manual_seed(3)
    x = torch.randn(4, 6, 5, 3)
    layer = make_layer(6, gate=1.0).eval()
    bn = nn.BatchNorm2d(6).eval()
    bn.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "gate"}, strict=False)
    torch.testing.assert_close(layer(x), bn(x), atol=1e-5, rtol=1e-5)
    inorm = make_layer(6, gate=0.0).eval()
    flat = x.reshape(4, 6, -1)
    mu, var = flat.mean(-1), flat.var(-1)  # unbiased, as the reference
    expected = (x - mu[..., None, None]) / (var[..., None, None] + EPS).sqrt() * inorm.weight[:, None, None] + inorm.bias[:, None, None]
    torch.testing.assert_close(inorm(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_agrees_with_nchw(training):
    torch.manual_seed(4)
    x = torch.randn(3, 5, 4, 6, requires_grad=True)
    nchw = make_layer(5, gate=0.6).train(training)
    nhwc = make_layer(5, gate=0.6, channels_last=True).train(training)
    y1 = nchw(x)
    x2 = x.detach().permute(0, 2, 3, 1).requires_grad_()
    y2 = nhwc(x2)
    torch.testing.assert_close(y2.permute(0, 3, 1, 2), y1)
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy.permute(0, 2, 3, 1))
    torch.testing.assert_close(x2.grad.permute(0, 3, 1, 2), x.grad)
    torch.testing.assert_close(nhwc.gate.grad, nchw.gate.grad)
    torch.testing.assert_close(nhwc.running_var, nchw.running_var)
    # A channels_last memory format tensor works on the NCHW layer without a copy of its own.
    y3 = nchw(x.detach().contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y3, y1.detach())


def test_running_statistics_after_several_steps_and_eval_switch():
    torch.manual_seed(5)
    layer = make_layer(4, gate=0.2).train()
    rm, rv = layer.running_mean.double().clone(), layer.running_var.double().clone()
    for step in range(4):
        x = torch.randn(3, 4, 3, 3) * (step + 1) + step
        layer(x)
        _, mu_bn, var_bn = independent_aibn(x, layer.weight, layer.bias, 0.2, rm, rv, True)
        rm, rv = 0.9 * rm + 0.1 * mu_bn, 0.9 * rv + 0.1 * var_bn
    assert_verbose_allclose(layer.running_mean, rm, 1e-5, 1e-5, "running_mean")
    assert_verbose_allclose(layer.running_var, rv, 1e-5, 1e-5, "running_var")
    x = torch.randn(2, 4, 3, 3)
    layer.eval()
    expected, _, _ = independent_aibn(x, layer.weight, layer.bias, 0.2, rm, rv, False)
    assert_verbose_allclose(layer(x), expected, 1e-5, 1e-5, "eval output")
    assert_verbose_allclose(layer.running_mean, rm, 1e-5, 1e-5, "eval leaves running_mean")


def test_state_dict_round_trip():
    a = make_layer(5, mix="std", gate=0.7, seed=9)
    b = AIBN(5, mix="std")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    assert set(a.state_dict()) == {"weight", "bias", "gate", "running_mean", "running_var"}


def test_shared_gate_accumulates_gradient_from_every_user():
    first = AIBN(3, gate_init=0.5)
    second = AIBN(3, gate=first.gate)
    assert second.gate is first.gate
    x = torch.randn(4, 3, 3, 3)
    (first(x).pow(2).sum() + second(x * 2).pow(3).sum()).backward()
    g_total = first.gate.grad.clone()
    for layer, inp, power in ((first, x, 2), (second, x * 2, 3)):
        solo = AIBN(3, gate_init=0.5)
        solo(inp).pow(power).sum().backward()
        g_total -= solo.gate.grad
    assert g_total.abs().item() < 1e-3


def test_no_running_update_during_backward_recomputation():
    """Gradient checkpointing recomputes the forward inside backward: no second update."""
    from torch.utils.checkpoint import checkpoint

    layer = make_layer(3).train()
    x = torch.randn(4, 3, 3, 3, requires_grad=True)
    before = layer.running_mean.clone()
    y = checkpoint(layer, x, use_reentrant=False)
    after_forward = layer.running_mean.clone()
    assert not torch.equal(before, after_forward)
    y.sum().backward()
    assert torch.equal(layer.running_mean, after_forward)


@pytest.mark.parametrize(
    "shape, channels_last, match",
    [
        ((2, 3, 4), False, "4-D input"),
        ((2, 5, 4, 4), False, "expected 3 channels"),
        ((2, 4, 4, 3), False, "channels_last=True"),
        ((2, 3, 1, 1), False, "H\\*W >= 2"),
        ((2, 1, 1, 3), True, "H\\*W >= 2"),
    ],
)
def test_bad_input_errors(shape, channels_last, match):
    layer = AIBN(3, channels_last=channels_last)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="mix must be one of"):
        AIBN(3, mix="mean")
    with pytest.raises(ValueError, match="backend must be one of"):
        AIBN(3, backend="cuda")
    with pytest.raises(ValueError, match="gate= must be an nn.Parameter"):
        AIBN(3, gate=torch.ones(2))
    with pytest.raises(TypeError, match="floating point"):
        AIBN(3)(torch.ones(2, 3, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_features": True}, "num_features must be a positive int, got True"),
    ({"num_features": 3, "gate_init": 5.0}, r"gate_init must be a number in \[0, 1\], got 5.0"),
    ({"num_features": 3, "gate_init": -0.1}, r"gate_init must be a number in \[0, 1\]"),
    ({"num_features": 3, "gate_init": True}, r"gate_init must be a number in \[0, 1\], got True"),
    ({"num_features": 3, "gate_init": "0.1"}, r"gate_init must be a number"),
])
def test_counts_and_gate_init_are_checked_as_patch_checks_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AIBN(**kwargs)
    assert AIBN(3, gate_init=1).gate.item() == 1.0  # the ends of [0, 1] and ints are fine


def test_extra_repr_names_backend():
    assert "backend='auto'" in repr(AIBN(3))
    assert "channels_last=True" in repr(AIBN(3, channels_last=True))


def _fast_and_reference(x, dy, channels_last, training, mix="var"):
    """dx, y of the fast autograd path (x's dtype) and of autograd through the float64 reference."""
    from timm_reid.layers._autograd import adaptive_norm

    c = x.shape[3] if channels_last else x.shape[1]
    layer = make_layer(c, mix, 0.4, channels_last=channels_last).train(training)
    kw = {} if training else {"eval_mean": layer.running_mean, "eval_var": layer.running_var}
    xa = x.clone().requires_grad_()
    y = adaptive_norm(xa, layer.weight, layer.bias, layer.gate, mix=mix, channels_last=channels_last, **kw)[0]
    y.backward(dy)
    xr = x.double().requires_grad_()
    y_ref = F.aibn(xr, layer.weight.double(), layer.bias.double(), layer.gate.double(), layer.running_mean.double(),
                   layer.running_var.double(), training=training, mix=mix, channels_last=channels_last)
    y_ref.backward(dy.double())
    return (y, xa.grad), (y_ref, xr.grad)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mix", ["var", "std"])
def test_fast_path_equals_reference_in_float64(channels_last, training, mix):
    """The centred one-buffer forward and backward are the reference's values to float64 rounding."""
    gen = torch.Generator().manual_seed(5)
    shape = (4, 3, 5, 6) if channels_last else (4, 6, 3, 5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    (y, dx), (y_ref, dx_ref) = _fast_and_reference(x, dy, channels_last, training, mix)
    assert_verbose_allclose(y, y_ref, 1e-12, 1e-12, "y")
    assert_verbose_allclose(dx, dx_ref, 1e-12, 1e-10, "dx")


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_has_no_cancellation_for_large_means(channels_last):
    """std 1e-3 around a mean of 1 (rstd ~ 1e3): y and dx in float32 stay close to the float64
    result. An uncentred form (``x * B + (c - B * mu_in)``) loses about three digits here."""
    gen = torch.Generator().manual_seed(6)
    shape = (3, 4, 6, 5) if channels_last else (3, 5, 4, 6)
    x = (1 + 1e-3 * torch.randn(shape, generator=gen, dtype=torch.float64)).float()
    dy = torch.randn(shape, generator=gen)
    (y, dx), (y_ref, dx_ref) = _fast_and_reference(x, dy, channels_last, training=True)
    assert_verbose_allclose(y, y_ref, 1e-3, 1e-3, "y")
    assert_verbose_allclose(dx, dx_ref, 1e-3 * float(dx_ref.abs().max()), 1e-3, "dx")


@pytest.mark.parametrize("training", [True, False])
def test_nchw_input_stored_channels_last_gives_the_contiguous_result(training):
    """Such inputs are reduced as their (N, H, W, C) memory view: same values and gradients."""
    torch.manual_seed(8)
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    dy = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    results = []
    for memory in (torch.contiguous_format, torch.channels_last):
        layer = make_layer(6, "var", 0.4).double().train(training)
        xm = x.clone(memory_format=memory).requires_grad_()
        y = layer(xm)
        y.backward(dy)
        results.append((y, xm.grad, layer.gate.grad, layer.running_mean.clone()))
    for got, want, name in zip(results[1], results[0], ("y", "dx", "dgate", "running_mean")):
        assert_verbose_allclose(got, want, 1e-12, 1e-12, name)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mix", ["var", "std"])
def test_one_segment_path_equals_the_segmented_path(channels_last, mix):
    """AIBN's whole-batch shortcut (no one-hot sums, no per-sample rows) against the generic
    segmented path given the same batch as segment 0 of two (segment 1 empty): outputs, running
    statistics and every gradient in float64."""
    from timm_reid.layers._autograd import adaptive_norm

    gen = torch.Generator().manual_seed(11)
    shape = (5, 3, 4, 6) if channels_last else (5, 6, 3, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 - 1
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    results = []
    for segments, num_segments in ((None, 1), (torch.zeros(5, dtype=torch.long), 2)):
        layer = make_layer(6, mix, 0.4, channels_last=channels_last).double()
        xa = x.clone().requires_grad_()
        y, seg_mean, seg_var, _ = adaptive_norm(xa, layer.weight, layer.bias, layer.gate, segments=segments,
                                                num_segments=num_segments, mix=mix, channels_last=channels_last)
        y.backward(dy)
        results.append((y, seg_mean[0], seg_var[0], xa.grad, layer.weight.grad, layer.bias.grad, layer.gate.grad))
    for name, fast, generic in zip(("y", "mean", "var", "dx", "dweight", "dbias", "dgate"), *results):
        assert_verbose_allclose(fast, generic, 1e-12, 1e-12, name)
