"""Tracing, compiling and exporting an AIBN model in eval mode with gradients enabled; saving a
patched model's state_dict with safetensors and as a timm hub-style folder, and loading it back."""
import io
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import timm_reid
from timm_reid.layers.aibn import recording_graph


def _model(entry, **extra):
    torch.manual_seed(0)
    model = timm_reid.create_model("resnet10t", num_classes=0, aibn=[3, 4], entry=entry, **extra)
    with torch.no_grad():  # gates and blend weights away from their init, so every branch counts
        for name, p in model.named_parameters():
            if name.endswith(("gate", "blend")):
                p.fill_(0.4)
    model.train()(torch.randn(4, 3, 64, 32), camids=torch.tensor([0, 1, 2, 0]))  # running statistics moved
    return model.eval()


X = torch.randn(2, 3, 64, 32)


@pytest.mark.parametrize("entry", ["replace", "blend"])
@pytest.mark.parametrize("recorder", ["jit.trace", "compile", "onnx-legacy"])
def test_eval_forwards_with_gradients_enabled_can_be_recorded(entry, recorder):
    model = _model(entry)
    with torch.no_grad():
        expected = model(X)
    assert torch.is_grad_enabled()
    if recorder == "jit.trace":
        torch.testing.assert_close(torch.jit.trace(model, X)(X), expected, rtol=1e-5, atol=1e-5)
    elif recorder == "compile":
        torch.testing.assert_close(torch.compile(model, backend="eager")(X), expected, rtol=1e-5, atol=1e-5)
    else:
        pytest.importorskip("onnx")
        torch.onnx.export(model, (X,), io.BytesIO(), dynamo=False)


def test_recording_graph_is_false_in_plain_eager_code():
    assert not recording_graph()


def test_the_plain_ops_path_gives_the_gradients_of_the_fused_one():
    model = _model("replace")
    x = X.clone().requires_grad_(True)
    model(x).square().sum().backward()
    fused = x.grad.clone()
    x.grad = None
    traced = torch.jit.trace(model, X)
    traced(x).square().sum().backward()
    torch.testing.assert_close(x.grad, fused, rtol=1e-4, atol=1e-5)


def test_state_dict_of_shared_gates_saves_with_safetensors_and_loads_back(tmp_path):
    model = _model("replace")  # gate="block": one Parameter under several keys
    shared = [m.gate for m in model.modules() if isinstance(m, timm_reid.AIBN)]
    assert len({id(g) for g in shared}) < len(shared)
    path = str(tmp_path / "sd.safetensors")
    save_file(model.state_dict(), path)
    fresh = timm_reid.create_model("resnet10t", num_classes=0, aibn=[3, 4], entry="replace",
                                   checkpoint_path=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)
    assert isinstance(model.state_dict(keep_vars=True)["layer3.0.bn1.gate"], torch.nn.Parameter)


@pytest.mark.parametrize("entry", ["replace", "blend"])
def test_a_hub_style_folder_records_the_patch_and_loads_back(tmp_path, entry):
    pytest.importorskip("huggingface_hub")
    model = _model(entry, tnorm=[2], num_cameras=3)
    folder = timm_reid.save_hub_folder(model, str(tmp_path / "hub"))
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["timm_reid"]["patch"]["entry"] == entry
    assert set(load_file(str(tmp_path / "hub" / "model.safetensors"))) == set(model.state_dict())
    loaded = timm_reid.create_model("local-dir:" + folder, pretrained=True).eval()
    assert timm_reid.patch_options(loaded) == timm_reid.patch_options(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)
    other = "blend" if entry == "replace" else "replace"
    with pytest.raises(timm_reid.OptionsMismatch, match=f"entry: stored '{entry}', this model '{other}'"):
        timm_reid.create_model("local-dir:" + folder, pretrained=True, aibn=[3, 4], entry=other)


def test_export_onnx_keeps_the_model_training_mode(tmp_path):
    pytest.importorskip("onnxscript")
    from timm_reid.export import export_onnx

    model = _model("replace", tnorm=[2], num_cameras=3).train()
    model.layer1.eval()  # a mixed state, as with frozen early stages
    before = {name: m.training for name, m in model.named_modules()}
    export_onnx(model, str(tmp_path / "m.onnx"), X, torch.tensor([0, 1]))
    assert {name: m.training for name, m in model.named_modules()} == before
