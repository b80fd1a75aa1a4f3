"""PatchOptions: one validated value, and the patch options travelling with the weights.

A checkpoint of an ``entry="replace"`` model used to load without a word into an ``entry="blend"``
model and compute another function; the options stored with the weights are now checked on load.
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import timm_reid
from timm_reid import PatchOptions
from timm_reid.backbone import read_backbone_metadata
from timm_reid.options import OptionsMismatch

SMALL = dict(num_classes=0)


def _model(**options):
    torch.manual_seed(0)
    return timm_reid.create_model("resnet10t", **options, **SMALL)


def test_options_are_validated_frozen_and_round_trip_through_plain_values():
    options = PatchOptions(aibn=[4, 3], tnorm=2, num_cameras=3, last_stride=2, entry="replace")
    assert options.aibn == (3, 4) and options.tnorm == (2,) and options.last_stride is None
    assert PatchOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.entry = "blend"
    with pytest.raises(ValueError, match="entry='stem' is not valid; choose one of 'replace', 'blend'"):
        PatchOptions(entry="stem")
    with pytest.raises(ValueError, match="gate_init must be a number in"):
        PatchOptions(gate_init=float("nan"))
    with pytest.raises(ValueError, match=r"stored.json: unknown patch option\(s\) \['gates'\]"):
        PatchOptions.from_dict({"gates": "block"}, source="stored.json")


def test_patch_and_create_model_take_the_value_or_its_keywords_not_both():
    options = PatchOptions(aibn=(4,), entry="replace")
    a, b = _model(**options.to_dict()), timm_reid.create_model("resnet10t", options, **SMALL)
    assert timm_reid.patch_options(a) == timm_reid.patch_options(b) == options
    assert a.timm_reid_config == options.to_dict()
    with pytest.raises(TypeError, match="not both"):
        timm_reid.create_model("resnet10t", options, aibn=[3], **SMALL)


def test_replace_weights_into_a_blend_model_are_refused_naming_both_values(tmp_path):
    replaced = _model(aibn=[3, 4], entry="replace")
    path = timm_reid.save_backbone(replaced, str(tmp_path / "b.safetensors"), model_name="resnet10t",
                                   input_size=(64, 32))
    with pytest.raises(OptionsMismatch, match="entry: stored 'replace', this model 'blend'"):
        _model(aibn=[3, 4], entry="blend", checkpoint_path=path)
    loaded = _model(aibn=[3, 4], entry="replace", checkpoint_path=path)  # the stored options: loads
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), replaced.eval()(x), rtol=0, atol=0)


def test_other_stored_options_that_change_the_function_are_refused(tmp_path):
    path = timm_reid.save_backbone(_model(aibn=[3, 4], mix="std"), str(tmp_path / "b.safetensors"),
                                   model_name="resnet10t", input_size=(64, 32))
    with pytest.raises(OptionsMismatch, match="mix: stored 'std', this model 'var'"):
        _model(aibn=[3, 4], checkpoint_path=path)
    with pytest.raises(OptionsMismatch, match=r"aibn: stored \(3, 4\), this model \(\)"):
        _model(checkpoint_path=path)
    # weights of an unpatched backbone are the usual start of any patched model
    plain = timm_reid.save_backbone(_model(), str(tmp_path / "plain.safetensors"), model_name="resnet10t",
                                    input_size=(64, 32))
    _model(aibn=[3, 4], entry="replace", checkpoint_path=plain)


def test_a_plain_state_dict_of_a_replace_model_is_refused_by_its_keys(tmp_path):
    """No stored options: an AIBN gate without a blend weight can only be entry='replace'."""
    path = str(tmp_path / "sd.pth")
    torch.save(_model(aibn=[4], entry="replace").state_dict(), path)
    with pytest.raises(ValueError, match="saved with entry='replace'.*--aibn-entry replace"):
        _model(aibn=[4], checkpoint_path=path)


def test_a_plain_state_dict_patched_in_other_stages_loads_with_a_warning(tmp_path):
    path = str(tmp_path / "sd.pth")
    torch.save(_model(aibn=[4], entry="replace").state_dict(), path)
    with pytest.warns(UserWarning, match="saved from a model patched differently"):
        _model(aibn=[3, 4], entry="replace", checkpoint_path=path)


def test_a_backbone_file_written_before_the_entry_option_loads_as_replace(tmp_path):
    """Records written before `entry` existed lack it: AIBN replaced the norms then."""
    model = _model(aibn=[4], entry="replace")
    path = str(tmp_path / "old.safetensors")
    timm_reid.save_backbone(model, path, model_name="resnet10t", input_size=(64, 32))
    tensors = load_file(path)
    record = read_backbone_metadata(path)
    del record["patch"]["entry"]
    save_file(tensors, path, metadata={"timm_reid": json.dumps(record)})
    loaded = timm_reid.load_backbone(path)
    assert timm_reid.patch_options(loaded).entry == "replace"
    with pytest.raises(OptionsMismatch, match="entry: stored 'replace'"):
        _model(aibn=[4], checkpoint_path=path)


def test_a_checkpoint_dict_stores_its_options_and_they_are_checked(tmp_path):
    from timm_reid._records import OPTIONS_KEY, options_entry

    model = _model(aibn=[4], entry="replace", gate="layer")
    path = str(tmp_path / "ckpt.pth")
    torch.save({"model": model.state_dict(), **options_entry(model)}, path)
    assert torch.load(path, weights_only=True)[OPTIONS_KEY]["gate"] == "layer"
    with pytest.raises(OptionsMismatch, match="gate: stored 'layer', this model 'block'"):
        _model(aibn=[4], entry="replace", checkpoint_path=path)
