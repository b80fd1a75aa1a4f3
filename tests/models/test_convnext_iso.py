"""Isotropic ConvNeXt: registered in timm, sizes of the paper, 4 block groups that patch() numbers."""
from __future__ import annotations

import pytest
import timm
import torch

import timm_reid.models  # noqa: F401  registers convnext_iso_* (timm_reid/__init__ imports it)
from timm_reid.layers import AIBN, TNorm
from timm_reid.surgery import patch

X = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def test_variants_are_in_timms_registry():
    assert {"convnext_iso_small", "convnext_iso_base", "convnext_iso_large", "convnext_iso_test"} <= set(
        timm.list_models("convnext_iso_*")
    )


@pytest.mark.parametrize(
    "name, dim, depths, millions",
    [
        ("convnext_iso_small", 384, (5, 4, 5, 4), 22.3),  # "Iso-ConvNeXt-S, 22M" (ConvNeXt paper table 2)
        ("convnext_iso_base", 768, (5, 4, 5, 4), 87.1),
    ],
)
def test_published_sizes(name, dim, depths, millions):
    with torch.device("meta"):  # parameter count only: no memory, no init time
        model = timm.create_model(name)
    assert model.num_features == dim
    assert tuple(len(stage.blocks) for stage in model.stages) == depths
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


def test_large_has_36_blocks_in_4_equal_groups():
    with torch.device("meta"):
        model = timm.create_model("convnext_iso_large")
    assert model.num_features == 1024 and [len(s.blocks) for s in model.stages] == [9, 9, 9, 9]


def test_isotropic_blocks_keep_one_resolution_and_width():
    model = timm.create_model("convnext_iso_test", num_classes=0).eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(X)
    assert [tuple(t.shape) for t in intermediates] == [(2, 32, 4, 2)] * 4
    assert model(X).shape == (2, 32)
    assert timm.create_model("convnext_iso_test", num_classes=7)(X).shape == (2, 7)


def test_aibn_on_stages_3_and_4_is_the_last_half_of_the_blocks():
    with torch.device("meta"):
        model = patch(timm.create_model("convnext_iso_small"), aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=6)
    blocks = [block for stage in model.stages for block in stage.blocks if not isinstance(block, TNorm)]
    patched = [isinstance(block.norm, AIBN) for block in blocks]
    assert patched == [False] * 9 + [True] * 9  # no downsample norms: the groups do not downsample
    assert sum(isinstance(m, TNorm) for m in model.modules()) == 3


def test_features_only_and_gradient_checkpointing():
    features = timm.create_model("convnext_iso_test", features_only=True)
    assert [tuple(t.shape) for t in features(X)] == [(2, 32, 4, 2)] * 4
    model = timm.create_model("convnext_iso_test")
    model.set_grad_checkpointing()
    model(X).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pretrained_loads_a_local_file_through_timm(tmp_path):
    source = timm.create_model("convnext_iso_test")
    path = tmp_path / "iso.pth"
    torch.save(source.state_dict(), path)
    model = timm.create_model("convnext_iso_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_bad_output_format_is_rejected():
    with pytest.raises(ValueError, match="output_fmt='NHWC'.*'NCHW'"):
        timm.create_model("convnext_iso_test").forward_intermediates(X, output_fmt="NHWC")
