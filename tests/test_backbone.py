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


def _with_record(tmp_path, edit, *, raw=None):
    """A valid backbone file whose metadata record is then changed by ``edit`` (or replaced by ``raw``)."""
    import json

    from safetensors.torch import load_file, save_file

    path = str(tmp_path / "edited.safetensors")
    timm_reid.save_backbone(_model(aibn=[4]), path, model_name="resnet10t", input_size=(64, 32))
    tensors = load_file(path)
    from timm_reid.backbone import read_backbone_metadata

    record = read_backbone_metadata(path)
    if edit is not None:
        edit(record, tensors)
    save_file(tensors, path, metadata={"timm_reid": raw if raw is not None else json.dumps(record)})
    return path


@pytest.mark.parametrize("key, value", [
    ("pretrained", True),  # would download
    ("checkpoint_path", "/etc/passwd"),  # would open another file
    ("pretrained_cfg_overlay", {"file": "/tmp/other.pth"}),
])
def test_metadata_cannot_steer_timm_to_the_network_or_other_files(tmp_path, monkeypatch, key, value):
    import timm

    path = _with_record(tmp_path, lambda record, _: record["timm_kwargs"].update({key: value}))
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k))
    with pytest.raises(ValueError, match=f"edited.safetensors.*timm_kwargs '{key}' is not allowed"):
        timm_reid.load_backbone(path)
    assert calls == []  # refused before timm was asked anything


@pytest.mark.parametrize("model_name", ["hf-hub:someone/model", "local-dir:/tmp/x", "no_such_model", 3])
def test_metadata_model_names_must_be_local_timm_names(tmp_path, model_name):
    path = _with_record(tmp_path, lambda record, _: record.update(model_name=model_name))
    with pytest.raises(ValueError, match="edited.safetensors.*is not a timm model name"):
        timm_reid.load_backbone(path)


@pytest.mark.parametrize("damage, message", [
    (dict(raw="{not json"), "metadata is not valid JSON"),
    (dict(edit=lambda r, _: r.pop("patch")), "missing patch"),
    (dict(edit=lambda r, _: r.update(input_size="64x32")), "input_size '64x32' must be"),
    (dict(edit=lambda r, _: r["timm_kwargs"].update(num_classes="0")), "num_classes='0' must be an int"),
    (dict(edit=lambda r, _: r["patch"].update(aibn="4")), "invalid patch options"),
    (dict(edit=lambda r, _: r.update(format_version="1")), "format_version '1' is not a positive int"),
    (dict(edit=lambda r, t: t.update({"layer4.0.bn1.weight": torch.zeros(3)})), "does not fit this model"),
    (dict(edit=lambda r, t: t.pop("layer4.0.bn1.gate")), "missing keys.*layer4.0.bn1.gate"),
])
def test_damaged_metadata_or_tensors_give_one_error_naming_the_file(tmp_path, damage, message):
    path = _with_record(tmp_path, damage.get("edit"), raw=damage.get("raw"))
    with pytest.raises(ValueError, match=f"edited.safetensors.*{message}"):
        timm_reid.load_backbone(path)


def test_save_backbone_refuses_timm_keywords_it_could_not_load_back(tmp_path):
    with pytest.raises(ValueError, match="timm_kwargs 'pretrained' is not allowed"):
        timm_reid.save_backbone(_model(), str(tmp_path / "b.safetensors"), model_name="resnet10t",
                                input_size=(64, 32), timm_kwargs={"num_classes": 0, "pretrained": True})
