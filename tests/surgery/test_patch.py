"""patch(): what gets replaced or inserted, in every supported family, and what stays valid."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.surgery.surgery_cases import SMALL, fresh, images, norms_in_stage, output_tensor, randomize_norm_state
import timm_reid
from timm_reid.layers import AIBN, TNorm
from timm_reid.surgery import describe, patch

CAMIDS = torch.tensor([0, 1, 1, 2])


def of_type(model: nn.Module, kind: type) -> dict:
    return {path: module for path, module in model.named_modules() if isinstance(module, kind)}


# --------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize(
    "build, aibn_count, gate_count",
    [
        # 12 block norms (9 + 3) + the downsample norms of stages 3 and 4
        (lambda: timm.create_model("convnext_tiny"), 14, 14),
        (lambda: torchvision.models.convnext_tiny(), 14, 14),
        # layer3: 6 blocks x 3 + downsample, layer4: 3 x 3 + downsample; one gate per block
        (lambda: timm.create_model("resnet50"), 29, 9),
        (lambda: torchvision.models.resnet50(), 29, 9),
    ],
    ids=["timm-convnext_tiny", "tv-convnext_tiny", "timm-resnet50", "tv-resnet50"],
)
def test_exact_counts_at_the_papers_configuration(build, aibn_count, gate_count):
    model = patch(build(), aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=6)
    counts = describe(model).counts
    assert (counts["AIBN"], counts["gates"], counts["TNorm"]) == (aibn_count, gate_count, 3)
    assert len(of_type(model, AIBN)) == aibn_count
    assert len({id(m.gate) for m in of_type(model, AIBN).values()}) == gate_count


# --------------------------------------------------------------------------- contract per family


@pytest.mark.parametrize("name", list(SMALL))
def test_every_family_patches_runs_and_trains(name):
    """Counts from an independent path scan, keys kept, camids reach TNorm, all params get gradients."""
    case = SMALL[name]
    model = randomize_norm_state(fresh(name))  # timm zero-inits the last BN gamma of each block
    expected_aibn = sorted(norms_in_stage(model, case, 3) + norms_in_stage(model, case, 4))
    unpatched_keys = set(model.state_dict())
    patch(model, aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=3, entry="replace")  # blend: see test_entry.py

    assert sorted(of_type(model, AIBN)) == expected_aibn
    assert len(of_type(model, TNorm)) == 3
    assert {k for k in unpatched_keys if not k.endswith("num_batches_tracked")} <= set(model.state_dict())

    model.train()
    out = output_tensor(model(images(), camids=CAMIDS))
    assert torch.isfinite(out).all()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    for tnorm in of_type(model, TNorm).values():  # cameras 0-2 were in the batch, only they moved
        assert not torch.equal(tnorm.running_mean, torch.zeros_like(tnorm.running_mean))


@pytest.mark.parametrize("name", ["convnext-nhwc", "convnext-nchw", "resnet", "tv-convnext"])
def test_aibn_inherits_weights_eps_and_running_stats(name):
    original = randomize_norm_state(fresh(name))
    model = patch(copy.deepcopy(original), aibn=[1, 2, 3, 4])
    before = dict(original.named_modules())
    for path, aibn in of_type(model, AIBN).items():
        old = before[path]
        torch.testing.assert_close(aibn.weight, old.weight, rtol=0, atol=0)
        torch.testing.assert_close(aibn.bias, old.bias, rtol=0, atol=0)
        assert aibn.eps == old.eps
        if isinstance(old, nn.BatchNorm2d):
            torch.testing.assert_close(aibn.running_mean, old.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(aibn.running_var, old.running_var, rtol=0, atol=0)
        assert aibn.channels_last == (type(old) in (timm.layers.LayerNorm, nn.LayerNorm))


def test_unpatched_checkpoint_loads_with_only_bn_counters_dropped():
    original = randomize_norm_state(fresh("resnet"))
    model = patch(copy.deepcopy(original), aibn=[3, 4], tnorm=[2], num_cameras=3, entry="replace")
    state = {k: v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith(".gate") or ".tnorm." in k for k in result.missing_keys)


# --------------------------------------------------------------------------- BN equivalence (property)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages=st.sets(st.integers(1, 4), min_size=1), downsample=st.booleans())
def test_resnet_aibn_with_gate_one_is_batchnorm_in_eval(stages, downsample):
    """w = 1 puts all weight on the running statistics: exactly the BatchNorm it replaced."""
    original = randomize_norm_state(fresh("resnet-d-mixed")).eval()
    model = patch(copy.deepcopy(original), aibn=sorted(stages), gate_init=1.0, downsample=downsample).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aibn=st.sets(st.integers(1, 4)), tnorm=st.sets(st.integers(1, 4)),
    gate=st.sampled_from(["block", "layer", "stage"]), downsample=st.booleans(),
    name=st.sampled_from(["resnet-d-mixed", "convnext-nchw", "tv-convnext"]),
)
def test_stage_subsets_patch_exactly_their_norms(aibn, tnorm, gate, downsample, name):
    assume(aibn or tnorm)
    case = SMALL[name]
    model = fresh(name)
    expected = [
        path for k in sorted(aibn) for path in norms_in_stage(model, case, k)
        if downsample or not _is_downsample_norm(path, case, k)
    ]
    patch(model, aibn=aibn, tnorm=tnorm, num_cameras=2, gate=gate, downsample=downsample)
    assert sorted(of_type(model, AIBN)) == sorted(expected)
    assert sorted(path.rsplit(".tnorm", 1)[0] for path in of_type(model, TNorm)) == sorted(
        _blocks_path(case, k) for k in tnorm
    )
    rows = [row for row in describe(model).layers if row.kind == "AIBN"]
    assert {row.stage for row in rows} == set(aibn if expected else ())
    gates = {id(m.gate) for m in of_type(model, AIBN).values()}
    if gate == "layer":
        assert len(gates) == len(expected)
    if gate == "stage":
        assert len(gates) == len({row.stage for row in rows})


def _is_downsample_norm(path: str, case, k: int) -> bool:
    """timm/torchvision name it `downsample`; torchvision ConvNeXt keeps it in its own `features.i`."""
    separate = case.stage_prefixes(k)[1:]
    return "downsample" in path.split(".") or any(path.startswith(prefix + ".") for prefix in separate)


def _blocks_path(case, k: int) -> str:
    prefix = case.stage_prefixes(k)[0]
    return prefix + ".blocks" if prefix.startswith("stages") else prefix


def test_block_gate_is_one_parameter_per_residual_block():
    model = patch(fresh("resnet"), aibn=[3])
    block = model.layer3[0]
    gate = block.bn1.gate
    assert block.bn2.gate is gate and block.downsample[1].gate is gate
    assert model.layer3[1].bn1.gate is not gate
    assert sum(1 for p in model.parameters() if p is gate) == 1  # parameters() dedups shared gates
    assert {k for k in model.state_dict() if k.startswith("layer3.0.") and k.endswith("gate")} == {
        "layer3.0.bn1.gate", "layer3.0.bn2.gate", "layer3.0.downsample.1.gate"
    }


# --------------------------------------------------------------------------- cameras


def test_camids_keyword_reaches_every_tnorm_and_is_cleared():
    model = patch(fresh("convnext-nhwc"), tnorm=[1, 2, 3], num_cameras=4).train()
    model(images(), camids=torch.tensor([0, 0, 2, 2]))
    for tnorm in of_type(model, TNorm).values():
        moved = tnorm.running_mean.abs().sum(dim=1) > 0
        assert moved.tolist() == [True, False, True, False]
    assert not model.timm_reid_cameras.active


def test_global_cameras_context_manager_reaches_tnorm():
    from timm_reid.layers import cameras

    model = patch(fresh("resnet"), tnorm=[2], num_cameras=3).train()
    with cameras(torch.tensor([1, 1, 1, 1])):
        model(images())
    assert (model.layer2.tnorm.running_mean.abs().sum(dim=1) > 0).tolist() == [False, True, False]


def test_plain_call_in_training_needs_cameras_or_says_it_has_none():
    """`model.train(); model(x)` (torchreid's engine) would record nothing: an error naming the layer
    and both ways to pass camera ids; `cameras(record=False)` is the explicit identity pass."""
    model = patch(fresh("convnext-nchw"), aibn=[3, 4], tnorm=[1], num_cameras=3)
    with pytest.raises(ValueError, match="needs camera ids") as info:
        model.train()(images())
    message = str(info.value)
    assert "stages.0" in message and "model(x, camids=" in message and "timm_reid.cameras(camids)" in message
    before = model.stages[0].blocks.tnorm.running_mean.clone()
    with timm_reid.cameras(record=False):
        assert torch.isfinite(model.train()(images())).all()
    assert torch.equal(model.stages[0].blocks.tnorm.running_mean, before)
    assert torch.isfinite(model.eval()(images())).all()


def test_eval_conversion_uses_the_camids_and_targets_keywords():
    """Eval conversion = (x - mean[cam]) / std[cam] * std[t] + mean[t] at the stage output."""
    model = patch(fresh("resnet"), tnorm=[4], num_cameras=2).eval()
    tnorm = model.layer4.tnorm
    with torch.no_grad():
        tnorm.running_mean.copy_(torch.stack([torch.zeros(48), torch.full((48,), 0.5)]))
        tnorm.running_var.copy_(torch.stack([torch.ones(48), torch.full((48,), 4.0)]))
        x = images()
        plain = model.forward_features(x)
        out = model(x, camids=torch.zeros(4, dtype=torch.long), convert=True, targets=torch.ones(4, dtype=torch.long))
    expected = model.forward_head(plain * ((4.0 + 1e-5) / (1.0 + 1e-5)) ** 0.5 + 0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_context_is_cleared_when_the_forward_raises():
    model = patch(fresh("resnet"), tnorm=[1], num_cameras=3)
    with pytest.raises(RuntimeError):
        model(torch.randn(4, 5, 64, 32), camids=CAMIDS)  # 5 input channels: conv1 fails
    assert not model.timm_reid_cameras.active


def test_deepcopy_keeps_hook_context_and_tnorms_together():
    model = patch(fresh("resnet"), tnorm=[1, 2], num_cameras=3)
    clone = copy.deepcopy(model).train()
    assert clone.layer1.tnorm.context is clone.timm_reid_cameras is clone.layer2.tnorm.context
    assert clone.timm_reid_cameras is not model.timm_reid_cameras
    clone(images(), camids=CAMIDS)
    assert clone.layer1.tnorm.running_mean.abs().sum() > 0


# --------------------------------------------------------------------------- last stride


@pytest.mark.parametrize("name", ["resnet", "resnet-d-mixed", "tv-resnet", "convnext-nhwc", "tv-convnext", "features-resnet"])
def test_last_stride_one_doubles_the_final_resolution_and_keeps_keys(name):
    model = fresh(name).eval()
    keys = set(model.state_dict())
    before = stage4_output(model, name)
    patch(model, last_stride=1)
    after = stage4_output(model, name)
    assert after.shape[-2:] == (2 * before.shape[-2], 2 * before.shape[-1])
    assert set(model.state_dict()) == keys
    assert describe(model).counts["stride"] >= 1
    with pytest.raises(ValueError, match="does not downsample"):
        patch(model, last_stride=1)


def stage4_output(model: nn.Module, name: str) -> torch.Tensor:
    outputs = []
    stage4 = model.get_submodule(SMALL[name].stage_prefixes(4)[0])
    handle = stage4.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.no_grad():
        model(images())
    handle.remove()
    return outputs[0]


def test_last_stride_one_without_dilation_in_resnet():
    model = patch(fresh("tv-resnet"), last_stride=1)
    convs = [m for m in model.layer4.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.dilation == (1, 1) and c.stride == (1, 1) for c in convs)


def test_last_stride_one_on_isotropic_convnext_is_an_error():
    with pytest.raises(ValueError, match="does not downsample"):
        patch(fresh("convnext-iso"), last_stride=1)


# --------------------------------------------------------------------------- errors


def test_unsupported_model_lists_supported_families():
    with pytest.raises(TypeError, match=r"(?s)Sequential.*timm ConvNeXt.*timm ResNet.*torchvision ResNet.*torchvision ConvNeXt"):
        patch(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), aibn=[1])


def test_unsupported_norm_in_a_stage_is_an_error_not_a_partial_patch():
    model = timm.create_model("test_convnext2", num_classes=0, norm_layer="rmsnorm")
    with pytest.raises(TypeError, match="RmsNorm.*can replace only"):
        patch(model, aibn=[2])
    assert not of_type(model, AIBN)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(aibn=[5]), ValueError, "aibn stage 5 is out of range.*stages 1-4"),
        (dict(aibn=[0]), ValueError, "numbered from 1"),
        (dict(tnorm=[1, 2]), ValueError, "needs num_cameras"),
        (dict(tnorm=[1], num_cameras=0), ValueError, "num_cameras must be a positive int"),
        (dict(aibn=[3, 3]), ValueError, "more than once"),
        (dict(aibn="34"), TypeError, "list of stage numbers"),
        (dict(aibn=[3.0]), TypeError, "int stage numbers"),
        (dict(aibn=[3], gate="blocks"), ValueError, "'block', 'layer', 'stage'"),
        (dict(aibn=[3], mix="mean"), ValueError, "'var', 'std'"),
        (dict(tnorm=[3], num_cameras=2, tnorm_mode="x"), ValueError, "'transform', 'normalize'"),
        (dict(aibn=[3], gate_init=1.5), ValueError, r"gate_init must be a number in \[0, 1\]"),
        (dict(last_stride=3), ValueError, "last_stride=3 is not valid"),
        (dict(), ValueError, "nothing to do"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    model = fresh("resnet")
    with pytest.raises(error, match=match):
        patch(model, **kwargs)
    assert not of_type(model, (AIBN, TNorm)) and not hasattr(model, "timm_reid_config")


@pytest.mark.parametrize(
    "first, second, match",
    [
        (dict(aibn=[3]), dict(aibn=[2, 3]), "stage 3 already has AIBN"),
        (dict(tnorm=[1], num_cameras=3), dict(tnorm=[1], num_cameras=3), "stage 1 already has a TNorm"),
        (dict(aibn=[3], gate="block"), dict(aibn=[4], gate="layer"), "options that differ"),
    ],
)
def test_patching_a_patched_stage_is_an_error_and_changes_nothing(first, second, match):
    model = patch(fresh("convnext-nchw"), **first)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        patch(model, **second)
    assert state.keys() == model.state_dict().keys()


def test_second_patch_on_other_stages_is_recorded_for_rebuilding():
    model = patch(fresh("resnet"), aibn=[4])
    patch(model, aibn=[3], tnorm=[1], num_cameras=5)
    assert model.timm_reid_config["aibn"] == [3, 4]
    assert model.timm_reid_config["tnorm"] == [1] and model.timm_reid_config["num_cameras"] == 5


# --------------------------------------------------------------------------- describe


def test_describe_reports_rows_and_renders_a_table():
    model = patch(fresh("convnext-nhwc"), aibn=[4], tnorm=[2], num_cameras=3, last_stride=1, entry="replace")
    description = describe(model)
    rows = {row.path: row for row in description.layers}
    assert rows["stages.3.blocks.0.norm"].kind == "AIBN"
    assert rows["stages.3.blocks.0.norm"].layout == "NHWC" and rows["stages.3.blocks.0.norm"].replaces == "LayerNorm"
    assert rows["stages.3.downsample.0"].layout == "NCHW" and rows["stages.3.downsample.0"].replaces == "LayerNorm2d"
    assert rows["stages.1.blocks.tnorm"].stage == 2 and rows["stages.1.blocks.tnorm"].replaces == "(inserted)"
    assert rows["stages.3.downsample.1"].kind == "stride"
    text = str(description)
    assert "stages.3.blocks.0.norm" in text and "gate group" in text and "timm ConvNeXt" in text
    assert describe(fresh("convnext-nhwc")).layers == ()


def test_timm_batchnorm_converters_leave_aibn_and_tnorm_in_place():
    """AIBN/TNorm are not _BatchNorm subclasses, so SyncBN conversion cannot silently undo them."""
    model = patch(fresh("resnet"), aibn=[3, 4], tnorm=[1], num_cameras=3)
    converted = timm.layers.convert_sync_batchnorm(model)
    assert len(of_type(converted, AIBN)) == 10 and len(of_type(converted, TNorm)) == 1
    assert isinstance(converted.layer1[0].bn1, nn.SyncBatchNorm)
