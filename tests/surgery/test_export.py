"""timm_reid.export: the exportable form of a patched model, camera ids and targets as graph inputs."""
from __future__ import annotations

import pytest
import torch

import timm_reid
from timm_reid.export import ExportableReID, export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _trained_tnorm_model():
    """resnet10t with AIBN 3-4 and TNorm 1-2-3 whose per-camera statistics differ (a few training steps)."""
    torch.manual_seed(0)
    model = timm_reid.create_model("resnet10t", aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=3, num_classes=0)
    model.train()
    shift = torch.tensor([0.0, 0.5, -0.5])[:, None, None, None]
    with torch.no_grad():
        for _ in range(3):
            camids = torch.tensor([0, 0, 1, 1, 2, 2])
            model(torch.randn(6, 3, 64, 32) + shift[camids], camids=camids)
    return model.eval()


def test_onnx_export_with_camera_inputs_matches_pytorch_at_another_batch_size(tmp_path):
    model = _trained_tnorm_model()
    x, camids, targets = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0, 2, 1])
    path = export_onnx(model, str(tmp_path / "reid.onnx"), x, camids, targets)

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "camids", "targets"]
    x7, c7, t7 = torch.randn(7, 3, 64, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0]), torch.tensor([1, 1, 1, 0, 0, 2, 2])
    (out,) = session.run(None, {"x": x7.numpy(), "camids": c7.numpy(), "targets": t7.numpy()})
    with torch.no_grad():
        expected = model(x7, camids=c7, convert=True, targets=t7)
        identity = model(x7)
    assert (expected - identity).abs().max() > 1e-3  # the conversion changes the features
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-4, rtol=1e-4)


def test_wrapper_forward_equals_keyword_call_and_refuses_misuse():
    model = _trained_tnorm_model()
    x, camids, targets = torch.randn(2, 3, 64, 32), torch.tensor([0, 2]), torch.tensor([1, 1])
    net = ExportableReID(model)
    assert not net.training and not model.training and net.num_cameras == 3
    with torch.no_grad():
        torch.testing.assert_close(net(x, camids, targets), model(x, camids=camids, convert=True, targets=targets))
        torch.testing.assert_close(ExportableReID(model, convert=False)(x, camids), model(x, camids=camids))
    with pytest.raises(ValueError, match="needs targets"):
        net(x, camids)
    with pytest.raises(ValueError, match="train the wrapped model"):
        net.train()
    plain = timm_reid.create_model("resnet10t", aibn=[3, 4], num_classes=0)
    with pytest.raises(ValueError, match="needs a model with TNorm"):
        ExportableReID(plain)


def test_torch_jit_script_limitation_is_as_documented():
    """README and timm_reid.export say that patched models do not script; keep the claim true."""
    model = timm_reid.create_model("resnet10t", tnorm=[1], num_cameras=2, num_classes=0).eval()
    with pytest.raises(Exception, match="keyword-only"):
        torch.jit.script(model)
