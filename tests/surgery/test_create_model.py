"""create_model(): timm.create_model + patch, rebuilding from the recorded config, checkpoint loading."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from tests.surgery.surgery_cases import images, randomize_norm_state
from timm_reid.factory import create_model
from timm_reid.layers import AIBN
from timm_reid.surgery import describe

SMALL = dict(channels=(16, 24, 32, 48), stem_width=16, num_classes=0)
PATCH = dict(aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=3)


def plain_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norm_state(timm.create_model("resnet18", **SMALL)).eval()


def assert_same_state(model, reference_state):
    state = model.state_dict()
    for key, value in reference_state.items():
        if key in state:
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_create_model_patches_and_records_a_rebuildable_config():
    model = create_model("resnet18", **PATCH, last_stride=1, **SMALL)
    assert describe(model).counts == {"AIBN": 10, "gates": 4, "TNorm": 3, "stride": 2}
    assert model.num_features == 48
    config = model.timm_reid_config
    assert config == dict(
        aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=3, gate="block", gate_init=0.1, mix="var",
        tnorm_mode="transform", downsample=True, last_stride=1, entry="blend",
    )
    rebuilt = create_model("resnet18", **config, **SMALL)
    assert describe(rebuilt).layers == describe(model).layers
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_baseline_without_patch_options_still_takes_camids():
    model = create_model("resnet18", **SMALL)
    assert describe(model).layers == ()
    assert model(images(), camids=torch.tensor([0, 1, 0, 1])).shape == (4, 48)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_a_checkpoint_of_the_unpatched_model(tmp_path, suffix):
    plain = plain_resnet()
    path = str(tmp_path / f"plain{suffix}")
    if suffix == ".pth":
        torch.save({"state_dict": plain.state_dict()}, path)
    else:
        safetensors.torch.save_file(plain.state_dict(), path)
    model = create_model("resnet18", **PATCH, checkpoint_path=path, **SMALL).eval()
    assert_same_state(model, plain.state_dict())
    assert isinstance(model.layer3[0].bn1, AIBN)
    # stages 1-2 hold no AIBN and eval TNorm is the identity: same stage-2 output as the plain model
    torch.testing.assert_close(layer2_output(model), layer2_output(plain))


def layer2_output(model) -> torch.Tensor:
    outputs = []
    handle = model.layer2.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.no_grad():
        model(images())
    handle.remove()
    return outputs[0]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_a_checkpoint_of_the_patched_model(tmp_path, suffix):
    source = create_model("resnet18", **PATCH, gate_init=0.3, **SMALL).train()
    source(images(), camids=torch.tensor([0, 1, 2, 2]))  # moves TNorm/AIBN running statistics
    with torch.no_grad():
        source.layer3[0].bn1.gate.fill_(0.7)
    path = str(tmp_path / f"patched{suffix}")
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:  # safetensors refuses shared tensors: save one copy per key
        safetensors.torch.save_file({k: v.clone() for k, v in source.state_dict().items()}, path)
    model = create_model("resnet18", **source.timm_reid_config, checkpoint_path=path, **SMALL)
    assert_same_state(model, source.state_dict())
    assert model.layer3[0].bn2.gate is model.layer3[0].bn1.gate and model.layer3[0].bn2.gate.item() == pytest.approx(0.7)


def test_pretrained_goes_through_timm_loading_before_the_patch(tmp_path):
    plain = plain_resnet()
    path = tmp_path / "weights.pth"
    torch.save(plain.state_dict(), path)
    model = create_model("resnet18", **PATCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert_same_state(model, plain.state_dict())


def test_checkpoint_of_another_model_lists_the_offending_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18", channels=(16, 24, 32, 48), stem_width=16).state_dict(), path)
    with pytest.raises(ValueError, match=r"(?s)unexpected keys \['fc.bias', 'fc.weight'\].*pretrained_cfg_overlay"):
        create_model("resnet18", **PATCH, checkpoint_path=str(path), **SMALL)


def test_missing_checkpoint_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model("resnet18", **SMALL, checkpoint_path="nowhere.pth")


def test_bad_patch_option_fails_before_building_the_model():
    with pytest.raises(ValueError, match="needs num_cameras"):
        create_model("resnet50", tnorm=[1])
