"""How AIBN enters a pretrained backbone: ``entry="blend"`` keeps the function exactly at the start."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.surgery.surgery_cases import SMALL, fresh, images, output_tensor, randomize_norm_state
from timm_reid.layers import AIBN, BlendedAIBN
from timm_reid.layers.calibrate import calibrate_aibn
from timm_reid.surgery import patch

FAMILIES = [name for name in SMALL if not name.startswith("features")]


def _trained_like(name):
    """A model whose norms hold non-trivial affine weights and running statistics."""
    model = fresh(name)
    randomize_norm_state(model)
    return model


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FAMILIES), stages=st.sets(st.integers(1, 4), min_size=1), train=st.booleans())
def test_blend_entry_computes_exactly_what_the_unpatched_model_computes(name, stages, train):
    model = _trained_like(name)
    patched = patch(copy.deepcopy(model), aibn=sorted(stages), entry="blend")
    x = images(4)
    model.train(train), patched.train(train)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(patched(x)), output_tensor(model(x)), rtol=0, atol=0)
    assert any(isinstance(m, BlendedAIBN) for m in patched.modules())


@pytest.mark.parametrize("name", ["convnext-nchw", "convnext-nhwc", "resnet", "tv-convnext"])
def test_blend_one_is_the_replacement_and_the_blend_weight_learns(name):
    model = _trained_like(name)
    replaced = patch(copy.deepcopy(model), aibn=[3, 4], entry="replace", gate_init=0.3).eval()
    blended = patch(copy.deepcopy(model), aibn=[3, 4], entry="blend", gate_init=0.3).eval()
    for m in blended.modules():
        if isinstance(m, BlendedAIBN):
            m.blend.data.fill_(1.0)
    x = images(4)
    torch.testing.assert_close(output_tensor(blended(x)), output_tensor(replaced(x)), rtol=1e-5, atol=1e-5)
    # at b = 0 the blend weight still gets a gradient (AIBN(x) - base(x) != 0): training can move it
    for m in blended.modules():
        if isinstance(m, BlendedAIBN):
            m.blend.data.zero_()
    blended.train()
    output_tensor(blended(x)).square().mean().backward()
    grads = [m.blend.grad for m in blended.modules() if isinstance(m, BlendedAIBN)]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().item() > 0 for g in grads)


def test_blend_formula_against_an_independent_composition():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 2)
    layer = BlendedAIBN(5, base="layernorm", channels_last=False, gate_init=0.4, blend_init=0.25)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    layer.train()
    y = layer(x)
    # independent: LayerNorm2d over channels; AIBN with batch/instance statistics mixed by w = 0.4
    xl = x.permute(0, 2, 3, 1)
    ln = ((xl - xl.mean(-1, keepdim=True)) / torch.sqrt(xl.var(-1, unbiased=False, keepdim=True) + layer.eps))
    ln = (ln * layer.weight + layer.bias).permute(0, 3, 1, 2)
    flat = x.flatten(2)
    mu_in, var_in = flat.mean(-1), flat.var(-1, unbiased=True)
    mu_bn = mu_in.mean(0)
    var_bn = (var_in + mu_in ** 2).mean(0) - mu_bn ** 2
    mu, var = 0.6 * mu_in + 0.4 * mu_bn, 0.6 * var_in + 0.4 * var_bn
    ai = (x - mu[..., None, None]) / torch.sqrt(var[..., None, None] + layer.eps)
    ai = ai * layer.weight[:, None, None] + layer.bias[:, None, None]
    torch.testing.assert_close(y, 0.75 * ln + 0.25 * ai, rtol=1e-5, atol=1e-5)


def test_blend_keeps_every_unpatched_state_dict_key_and_rebuilds_from_its_config():
    import timm_reid
    model = timm_reid.create_model("resnet10t", num_classes=0)
    before = set(model.state_dict())
    patched = timm_reid.create_model("resnet10t", num_classes=0, aibn=[3, 4], entry="blend")
    after = set(patched.state_dict())
    assert {k for k in before - after if not k.endswith("num_batches_tracked")} == set()
    assert {k.rsplit(".", 1)[1] for k in after - before} == {"gate", "blend"}
    assert patched.timm_reid_config["entry"] == "blend"
    rebuilt = timm_reid.create_model("resnet10t", num_classes=0, **patched.timm_reid_config)
    assert sum(isinstance(m, BlendedAIBN) for m in rebuilt.modules()) == 6


def test_bad_entry_and_blend_init_are_refused():
    with pytest.raises(ValueError, match="entry='mix' is not valid"):
        patch(fresh("resnet"), aibn=[4], entry="mix")
    with pytest.raises(ValueError, match="blend_init must be a number in \\[0, 1\\]"):
        BlendedAIBN(4, base="layernorm", blend_init=2.0)
    with pytest.raises(ValueError, match="base must be one of"):
        BlendedAIBN(4, base="groupnorm")


def test_calibration_sets_running_statistics_to_the_mean_batch_statistics_and_nothing_else():
    model = patch(_trained_like("resnet"), aibn=[4], tnorm=[2], num_cameras=3).eval()
    other = {k: v.clone() for k, v in model.state_dict().items() if "layer4" not in k}
    batches = [(images(4, seed=s), torch.tensor([0, 1, 2, 0])) for s in range(3)]
    first = next(m for m in model.modules() if isinstance(m, AIBN))
    inputs = []
    hook = first.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    assert calibrate_aibn(model, batches) == 12
    hook.remove()
    # independent: mean over batches of (mean of instance means, pooled variance) at the first AIBN
    means, vars_ = [], []
    for x in inputs:
        flat = x.flatten(2)
        mu_in, var_in = flat.mean(-1), flat.var(-1, unbiased=True)
        mu_bn = mu_in.mean(0)
        means.append(mu_bn), vars_.append((var_in + mu_in ** 2).mean(0) - mu_bn ** 2)
    torch.testing.assert_close(first.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var, torch.stack(vars_).mean(0), rtol=1e-5, atol=1e-6)
    assert not model.training and all(not m.training for m in model.modules())
    for k, v in model.state_dict().items():
        if k in other:
            torch.testing.assert_close(v, other[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="no AIBN layer"):
        calibrate_aibn(fresh("resnet"), batches)


def test_replacing_trained_layernorms_warns_and_names_the_exact_entry(tmp_path):
    import warnings

    import timm_reid
    trained = _trained_like("convnext-nchw")
    with pytest.warns(UserWarning, match="entry='blend' keeps the pretrained function"):
        patch(copy.deepcopy(trained), aibn=[4], entry="replace")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch(copy.deepcopy(trained), aibn=[4], entry="blend")          # exact: nothing to warn about
        patch(fresh("convnext-nchw"), aibn=[4], entry="replace")  # untrained norms: nothing lost
        patch(_trained_like("resnet"), aibn=[4], entry="replace")  # BatchNorm: gate 1 is BatchNorm
    # the same through create_model: the checkpoint loads after patching
    model = timm_reid.create_model("convnext_atto", num_classes=0)
    randomize_norm_state(model)
    path = timm_reid.save_backbone(model, str(tmp_path / "b.safetensors"), model_name="convnext_atto",
                                   input_size=(64, 32))
    with pytest.warns(UserWarning, match="replaced .* trained LayerNorm"):
        timm_reid.create_model("convnext_atto", num_classes=0, aibn=[4], entry="replace", checkpoint_path=path)


def test_affine_refit_is_the_per_channel_least_squares_fit_to_the_replaced_norm():
    import warnings
    reference = _trained_like("convnext-nchw").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = patch(copy.deepcopy(reference), aibn=[4], entry="replace").eval()
    batches = [images(4, seed=s) for s in range(2)]
    path, first = next((p, m) for p, m in model.named_modules() if isinstance(m, AIBN))
    inputs = []
    hook = first.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    calibrate_aibn(model, batches, reference=reference)
    hook.remove()
    xs = torch.cat(inputs[-2:])  # the inputs of the affine pass (the earlier ones: statistics pass)
    target = dict(reference.named_modules())[path](xs)
    with torch.no_grad():
        w, b = first.weight.clone(), first.bias.clone()
        first.weight.fill_(1), first.bias.zero_()
        z = first(xs)
        first.weight.copy_(w), first.bias.copy_(b)
    for c in range(z.shape[1]):
        A = torch.stack([z[:, c].flatten(), torch.ones(z[:, c].numel())], 1).double()
        solution = torch.linalg.lstsq(A, target[:, c].flatten().double()[:, None]).solution[:, 0]
        torch.testing.assert_close(torch.stack([w[c], b[c]]).double(), solution, rtol=1e-4, atol=1e-5)


def test_blend_is_the_default_and_its_gates_learn_once_the_blend_has_moved():
    model = patch(_trained_like("resnet"), aibn=[4])
    layers = [m for m in model.modules() if isinstance(m, AIBN)]
    assert layers and all(isinstance(m, BlendedAIBN) for m in layers)
    model.train()
    x = images(4)
    output_tensor(model(x)).square().mean().backward()
    assert all(m.gate.grad is None or m.gate.grad.abs().sum() == 0 for m in layers)  # b = 0: AIBN unused yet
    assert any(m.blend.grad.abs().item() > 0 for m in layers)
    for m in layers:
        m.blend.data.fill_(0.5)
    model.zero_grad()
    output_tensor(model(x)).square().mean().backward()
    assert any(m.gate.grad is not None and m.gate.grad.abs().item() > 0 for m in layers)


@pytest.mark.parametrize("name", ["resnet", "convnext-nchw"])
def test_blend_trains_through_several_forwards_before_one_backward(name):
    """The IICS intra stage forwards each camera's images, then takes one backward: a BatchNorm base
    must not save running buffers that the next forward's statistics update modifies in place."""
    model = patch(_trained_like(name), aibn=[3, 4], entry="blend").train()
    for m in model.modules():
        if isinstance(m, BlendedAIBN):
            m.blend.data.fill_(0.2)
    loss = sum(output_tensor(model(images(4))).square().mean() for _ in range(3))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
