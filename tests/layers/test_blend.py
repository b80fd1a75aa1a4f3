"""The fused blend (one autograd Function) against the two-norm composition written out here:
``base(x) + b * (AIBN(x) - base(x))`` with the base through torch's functional norms and AIBN
through the reference math, differentiated by autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.utils import TOLERANCES, assert_verbose_allclose
from timm_reid.layers import BlendedAIBN, functional as reference


def composed(layer, x, running_mean, running_var, training):
    """The two-norm composition with its own copies of the parameters (autograd)."""
    params = {k: getattr(layer, k).detach().clone().requires_grad_() for k in ("weight", "bias", "gate", "blend")}
    rm, rv = running_mean.clone(), running_var.clone()
    if layer.base == "batchnorm":
        base = F.batch_norm(x, None if training else rm, None if training else rv, params["weight"], params["bias"],
                            training=training, eps=layer.eps)
    elif layer.channels_last:
        base = F.layer_norm(x, (layer.num_features,), params["weight"], params["bias"], layer.eps)
    else:
        base = F.layer_norm(x.permute(0, 2, 3, 1), (layer.num_features,), params["weight"], params["bias"],
                            layer.eps).permute(0, 3, 1, 2)
    adaptive = reference.aibn(x, params["weight"], params["bias"], params["gate"], rm, rv, training=training,
                              momentum=layer.momentum, eps=layer.eps, mix=layer.mix, channels_last=layer.channels_last)
    b = params["blend"] + (params["blend"].clamp(0, 1) - params["blend"]).detach()  # straight-through, as the layer
    return base + b * (adaptive - base), params, rm, rv


# (base, channels_last layer, NCHW input stored channels-last in memory, as timm's LayerNorm2d sites)
CASES = [("batchnorm", False, False), ("batchnorm", False, True), ("layernorm", False, False),
         ("layernorm", False, True), ("layernorm", True, False)]


@pytest.mark.parametrize("base, channels_last, nhwc_memory", CASES)
@pytest.mark.parametrize("blend", [0.0, 0.3, 1.0, 1.4])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mix", ["var", "std"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_blend_equals_two_norm_composition(base, channels_last, nhwc_memory, blend, training, mix, dtype):
    gen = torch.Generator().manual_seed(7)
    c = 6
    shape = (4, 3, 5, c) if channels_last else (4, c, 3, 5)
    layer = BlendedAIBN(c, base=base, channels_last=channels_last, mix=mix, gate_init=0.35).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
        layer.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
        layer.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype))
        layer.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
        layer.blend.fill_(blend)
    layer.train(training)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1
    if nhwc_memory:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    rm0, rv0 = layer.running_mean.clone(), layer.running_var.clone()
    assert layer._fused(x)
    y = layer(x)
    y.backward(dy)

    xr = x.detach().clone().requires_grad_()
    want, params, rm, rv = composed(layer, xr, rm0, rv0, training)
    want.backward(dy)
    atol, rtol = (1e-10, 1e-10) if dtype == torch.float64 else tuple(10 * t for t in TOLERANCES[dtype])
    assert_verbose_allclose(y, want, atol, rtol, "y")
    assert_verbose_allclose(x.grad, xr.grad, atol, rtol, "dx")
    for name in ("weight", "bias", "gate", "blend"):
        got = getattr(layer, name).grad
        assert got is not None, f"d{name} missing (autograd gives the composition a zero gradient)"
        assert_verbose_allclose(got, params[name].grad, atol * 10, rtol * 10, f"d{name}")
    assert_verbose_allclose(layer.running_mean, rm, atol, rtol, "running_mean")
    assert_verbose_allclose(layer.running_var, rv, atol, rtol, "running_var")
    if not training:
        assert torch.equal(layer.running_mean, rm0)


@pytest.mark.parametrize("base, channels_last", [("batchnorm", False), ("layernorm", False), ("layernorm", True)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_blend_at_zero_is_the_base_norm_bit_for_bit(base, channels_last, training):
    torch.manual_seed(3)
    layer = BlendedAIBN(5, base=base, channels_last=channels_last).train(training)
    x = torch.randn((3, 4, 2, 5) if channels_last else (3, 5, 4, 2), requires_grad=True)
    y = layer(x)
    if base == "batchnorm":
        want = F.batch_norm(x, None if training else layer.running_mean, None if training else layer.running_var,
                            layer.weight, layer.bias, training=training, eps=layer.eps)
    elif channels_last:
        want = F.layer_norm(x, (5,), layer.weight, layer.bias, layer.eps)
    else:
        want = F.layer_norm(x.permute(0, 2, 3, 1), (5,), layer.weight, layer.bias, layer.eps).permute(0, 3, 1, 2)
    assert torch.equal(y, want)


def test_fused_path_is_skipped_where_it_does_not_apply():
    layer = BlendedAIBN(4, base="layernorm").eval()
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        assert not layer._fused(x)  # inference: the plain composition (traceable, exportable)
    assert not layer.train()._fused(x.to(torch.bfloat16))
    assert layer._fused(x)
