"""Portable backbone files: save -> load in a fresh model gives the same function, pickle-free."""

import pytest
import torch

import timm_reid


def _model(**patch):
    torch.manual_seed(0)
    return timm_reid.create_model("resnet10t", num_classes=0, **patch)


@pytest.mark.parametrize("patch", [{}, {"aibn": [3, 4], "tnorm": [1, 2], "num_cameras": 3}])
def test_round_trip_keeps_the_function_and_the_shared_gates(tmp_path, patch):
    model = _model(**patch).train()
    x, cams = torch.randn(6, 3, 64, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    model(x, camids=cams)  # moves running statistics away from their init
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.01 * torch.randn_like(p)) if not name.endswith("gate") else p.fill_(0.3)
    path = timm_reid.save_backbone(model, str(tmp_path / "b.safetensors"), model_name="resnet10t",
                                   input_size=(64, 32), extra={"method": "test"})
    loaded = timm_reid.load_backbone(path)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.timm_reid_backbone["input_size"] == [64, 32]
    assert loaded.timm_reid_backbone["extra"] == {"method": "test"}
    gates = {id(m.gate) for m in loaded.modules() if isinstance(m, timm_reid.AIBN)}
    originals = {id(m.gate) for m in model.modules() if isinstance(m, timm_reid.AIBN)}
    assert len(gates) == len(originals)  # sharing survives the round trip
    assert not loaded.training


def test_run_directory_and_create_model_accept_the_file(tmp_path):
    model = _model()
    timm_reid.save_backbone(model, str(tmp_path / "backbone.safetensors"), model_name="resnet10t",
                            input_size=(64, 32))
    a = timm_reid.load_backbone(str(tmp_path))
    b = timm_reid.create_model("resnet10t", num_classes=0, aibn=[4],
                               checkpoint_path=str(tmp_path / "backbone.safetensors"))
    assert isinstance(b.layer4[0].bn1, timm_reid.AIBN)
    torch.testing.assert_close(b.layer4[0].bn1.weight, a.layer4[0].bn1.weight)


def test_damaged_and_foreign_files_are_refused_by_name(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors is not a readable timm-reid backbone"):
        timm_reid.load_backbone(str(bad))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="without timm-reid metadata"):
        timm_reid.load_backbone(str(tmp_path / "plain.safetensors"))
    with pytest.raises(FileNotFoundError, match="without backbone.safetensors"):
        timm_reid.load_backbone(str(tmp_path))
