"""TNorm against an independent per-camera formula (docs/DESIGN.md 3.2, IIDS reference behaviour)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tests.utils import TOLERANCES, assert_verbose_allclose
from timm_reid.layers import CameraContext, TNorm, cameras

EPS = 1e-5


def batch_stats(x):
    """IIDS reference batch statistics of a single-camera batch, float64: (C,), (C,)."""
    flat = x.double().reshape(x.shape[0], x.shape[1], -1)
    mu_in = flat.mean(-1)
    var_in = flat.var(-1)  # unbiased
    mu = mu_in.mean(0)
    return mu, (var_in + mu_in**2).mean(0) - mu**2


def single_camera_reference(x, rm, rv, cam, training, convert, targets):
    """What the IIDS TNorm does to a batch from one camera ``cam`` (None: unknown camera).

    Returns the output and the new running buffers (float64).
    """
    rm, rv = rm.double().clone(), rv.double().clone()
    y = x.double()
    if training:
        mu, var = batch_stats(x)
        if convert:
            t = targets
            y = (y - mu[:, None, None]) / (var[:, None, None] + EPS).sqrt()
            y = y * (rv[t][:, :, None, None] + EPS).sqrt() + rm[t][:, :, None, None]
        if cam is not None:
            rm[cam] = 0.9 * rm[cam] + 0.1 * mu
            rv[cam] = 0.9 * rv[cam] + 0.1 * var
    elif convert:
        t = targets
        src = torch.as_tensor(cam).reshape(-1)  # one camera for all, or one per sample
        y = (y - rm[src][:, :, None, None]) / (rv[src][:, :, None, None] + EPS).sqrt()
        y = y * (rv[t][:, :, None, None] + EPS).sqrt() + rm[t][:, :, None, None]
    return y, rm, rv


def make_tnorm(c, d, mode="transform", seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = TNorm(c, d, mode=mode)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(d, c, generator=g))
        layer.running_var.copy_(torch.rand(d, c, generator=g) + 0.5)
        if mode == "normalize":
            layer.weight.copy_(torch.randn(c, generator=g))
            layer.bias.copy_(torch.randn(c, generator=g))
    return layer


@settings(max_examples=40, deadline=None)
@given(
    camids=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    c=st.integers(1, 5),
    hw=st.sampled_from([(1, 2), (2, 3), (3, 3)]),
    training=st.booleans(),
    convert=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_mixed_camera_batch_equals_per_camera_reference(camids, c, hw, training, convert, seed):
    """A mixed batch behaves as if each camera's samples had been a single-camera reference batch."""
    g = torch.Generator().manual_seed(seed)
    layer = make_tnorm(c, 4, seed=seed).train(training)
    n = len(camids)
    cam = torch.tensor(camids)
    targets = torch.randint(4, (n,), generator=g)
    x = torch.randn(n, c, *hw, generator=g) * 1.5 + 0.5
    rm0, rv0 = layer.running_mean.clone(), layer.running_var.clone()
    y = layer(x, cam, convert=convert, targets=targets)
    expected = torch.empty_like(x, dtype=torch.float64)
    rm, rv = rm0.double().clone(), rv0.double().clone()
    for k in sorted(set(camids)):
        idx = (cam == k).nonzero().flatten()
        y_k, rm_k, rv_k = single_camera_reference(x[idx], rm0, rv0, k, training, convert, targets[idx])
        expected[idx] = y_k
        rm[k], rv[k] = rm_k[k], rv_k[k]
    assert_verbose_allclose(y, expected, 1e-5, 1e-5, "y")
    assert_verbose_allclose(layer.running_mean, rm, 1e-5, 1e-5, "running_mean")
    assert_verbose_allclose(layer.running_var, rv, 1e-5, 1e-5, "running_var")


def test_unknown_camera_converts_from_whole_batch_and_keeps_buffers():
    layer = make_tnorm(3, 2).train()
    x = torch.randn(5, 3, 2, 2)
    targets = torch.tensor([0, 1, 1, 0, 1])
    rm0 = layer.running_mean.clone()
    y = layer(x, convert=True, targets=targets)
    expected, _, _ = single_camera_reference(x, rm0, layer.running_var, None, True, True, targets)
    assert_verbose_allclose(y, expected, 1e-5, 1e-5, "y")
    assert torch.equal(layer.running_mean, rm0)


def test_training_conversion_stops_gradient_through_source_statistics():
    layer = make_tnorm(3, 2).train()
    x = torch.randn(4, 3, 3, 2, requires_grad=True)
    cam = torch.tensor([0, 0, 1, 1])
    targets = torch.tensor([1, 0, 0, 1])
    rv0 = layer.running_var.clone()
    y = layer(x, cam, convert=True, targets=targets)
    dy = torch.randn_like(y)
    y.backward(dy)
    expected = torch.empty_like(x)
    for k in (0, 1):
        idx = (cam == k).nonzero().flatten()
        _, var = batch_stats(x.detach()[idx])
        scale = (rv0[targets[idx]].double() + EPS).sqrt() / (var + EPS).sqrt()
        expected[idx] = (dy[idx].double() * scale[:, :, None, None]).float()
    assert_verbose_allclose(x.grad, expected, 1e-5, 1e-5, "dx")


def test_identity_modes_return_input_unchanged():
    layer = make_tnorm(3, 2)
    x = torch.randn(2, 3, 2, 2)
    assert layer.eval()(x) is x
    with cameras(record=False):  # no camera ids, on purpose: identity, nothing to record
        assert layer.train()(x) is x
    assert torch.equal(layer.train()(x, torch.tensor([0, 1])), x)


def test_eval_conversion_to_target_camera_and_back():
    layer = make_tnorm(4, 3).eval()
    x = torch.randn(2, 4, 3, 3)
    cam = torch.tensor([0, 2])
    y = layer(x, cam, convert=True, targets=torch.tensor([1, 1]))
    expected, _, _ = single_camera_reference(x, layer.running_mean, layer.running_var, cam, False, True, torch.tensor([1, 1]))
    assert_verbose_allclose(y, expected, 1e-5, 1e-5, "converted")
    back = layer(y, torch.tensor([1, 1]), convert=True, targets=cam)
    assert_verbose_allclose(back, x, 1e-4, 1e-4, "round trip")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_keep_input_dtype(dtype):
    layer = make_tnorm(3, 2).train()
    x = torch.randn(4, 3, 3, 3)
    cam, targets = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 0])
    ref = make_tnorm(3, 2).train()(x, cam, convert=True, targets=targets)
    y = layer(x.to(dtype), cam, convert=True, targets=targets)
    assert y.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    assert_verbose_allclose(y, ref, 20 * atol, 20 * rtol, str(dtype))


def normalize_reference(x, weight, bias, mean, var):
    y = (x.double() - mean[..., None, None]) / (var[..., None, None] + EPS).sqrt()
    return y * weight.double()[:, None, None] + bias.double()[:, None, None]


def test_normalize_mode_training_eval_and_pooled():
    layer = make_tnorm(3, 3, mode="normalize").train()
    x = torch.randn(6, 3, 2, 3, requires_grad=True)
    cam = torch.tensor([2, 0, 2, 0, 0, 2])
    y = layer(x, cam)
    expected = torch.empty(6, 3, 2, 3, dtype=torch.float64)
    for k in (0, 2):
        idx = (cam == k).nonzero().flatten()
        mu, var = batch_stats(x.detach()[idx])
        expected[idx] = normalize_reference(x.detach()[idx], layer.weight, layer.bias, mu, var)
    assert_verbose_allclose(y, expected, 1e-5, 1e-5, "train")
    y.pow(2).sum().backward()  # gradients flow through the per-camera statistics
    assert x.grad is not None and layer.weight.grad is not None

    layer.eval()
    rm, rv = layer.running_mean.double(), layer.running_var.double()
    xe = torch.randn(2, 3, 2, 3)
    y = layer(xe, torch.tensor([1, 2]))
    expected = torch.stack([normalize_reference(xe[i : i + 1], layer.weight, layer.bias, rm[k], rv[k])[0] for i, k in enumerate((1, 2))])
    assert_verbose_allclose(y, expected, 1e-5, 1e-5, "eval")
    pooled_mean = rm.mean(0)
    pooled_var = (rv + rm**2).mean(0) - pooled_mean**2  # variance of the equal-weight mixture
    assert_verbose_allclose(layer(xe), normalize_reference(xe, layer.weight, layer.bias, pooled_mean, pooled_var), 1e-5, 1e-5, "pooled")


def test_context_supplies_camera_ids_and_shares_targets():
    ctx = CameraContext()
    first, second = make_tnorm(2, 4), make_tnorm(2, 4)
    first.context = second.context = ctx
    x = torch.randn(6, 2, 2, 2)
    ctx.set(torch.tensor([0, 1, 2, 3, 0, 1]), convert=True)
    first.eval()(x)
    drawn = ctx.targets.clone()
    second.eval()(x)
    assert torch.equal(ctx.targets, drawn)  # the second TNorm reused the first one's targets
    ctx.clear()
    assert ctx.targets is None and not ctx.active


def test_global_cameras_block_and_precedence():
    layer = make_tnorm(2, 3).train()
    x = torch.randn(4, 2, 2, 2)
    with cameras([0, 0, 2, 2]):
        layer(x)
    expected_row = batch_stats(x[2:])[0]
    assert_verbose_allclose(layer.running_mean[2], 0.9 * make_tnorm(2, 3).running_mean[2].double() + 0.1 * expected_row, 1e-5, 1e-5, "row 2")
    # An active per-layer context wins over the global block; explicit arguments win over both.
    ctx = CameraContext()
    ctx.set([1, 1, 1, 1])
    layer.context = ctx
    before = layer.running_mean.clone()
    with cameras([0, 0, 0, 0]):
        layer(x)
    assert torch.equal(layer.running_mean[0], before[0]) and not torch.equal(layer.running_mean[1], before[1])
    before = layer.running_mean.clone()
    layer(x, torch.tensor([2, 2, 2, 2]))
    assert torch.equal(layer.running_mean[1], before[1]) and not torch.equal(layer.running_mean[2], before[2])


def test_no_running_update_during_backward_recomputation():
    from torch.utils.checkpoint import checkpoint

    layer = make_tnorm(3, 2).train()
    x = torch.randn(4, 3, 3, 3, requires_grad=True)
    cam = torch.tensor([0, 1, 0, 1])
    y = checkpoint(lambda t: layer(t, cam, convert=True, targets=cam.flip(0)), x, use_reentrant=False)
    after_forward = layer.running_mean.clone()
    y.sum().backward()
    assert torch.equal(layer.running_mean, after_forward)


def test_state_dict_round_trip():
    a = make_tnorm(3, 2, mode="normalize", seed=4)
    b = TNorm(3, 2, mode="normalize")
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert set(make_tnorm(3, 2).state_dict()) == {"running_mean", "running_var"}
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(a.eval()(x, [0, 1]), b.eval()(x, [0, 1]))


@pytest.mark.parametrize(
    "mode, training, kwargs, error, match",
    [
        ("normalize", True, {}, ValueError, "needs camera ids"),
        ("transform", False, {"convert": True}, ValueError, "needs the source camera ids"),
        ("transform", True, {"camids": [0, 1]}, ValueError, "got 2 camids for a batch of 3"),
        ("transform", True, {"camids": [0, 1, 3]}, ValueError, r"must lie in \[0, 2\]"),
        ("transform", True, {"camids": [0, -1, 1]}, ValueError, r"must lie in \[0, 2\]"),
        ("transform", True, {"camids": [0.0, 1.0, 1.0]}, TypeError, "integer camera indices"),
        ("transform", True, {"camids": [[0, 1, 1]]}, ValueError, "1-D tensor"),
        ("transform", True, {"camids": [0, 1, 1], "convert": True, "targets": [0, 5, 1]}, ValueError, "targets must lie"),
    ],
)
def test_bad_camera_ids(mode, training, kwargs, error, match):
    layer = TNorm(2, 3, mode=mode).train(training)
    layer.name = "stages.1.tnorm"
    with pytest.raises(error, match=match) as info:
        layer(torch.randn(3, 2, 2, 2), **kwargs)
    assert "TNorm(2, num_cameras=3" in str(info.value) and "stages.1.tnorm" in str(info.value)


def test_bad_constructor_arguments_and_input():
    with pytest.raises(ValueError, match="mode must be one of"):
        TNorm(3, 2, mode="convert")
    with pytest.raises(ValueError, match="num_cameras must be a positive int"):
        TNorm(3, 0)
    with pytest.raises(ValueError, match="num_cameras must be a positive int, got True"):
        TNorm(8, num_cameras=True)  # bool is an int to Python, not a count
    with pytest.raises(ValueError, match="num_features must be a positive int, got False"):
        TNorm(False, 2)
    with pytest.raises(ValueError, match="expected 3 channels"):
        TNorm(3, 2).train()(torch.randn(2, 4, 2, 2), [0, 1])
