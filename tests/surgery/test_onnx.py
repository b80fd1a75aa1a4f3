"""ONNX export of patched models in eval mode, run in onnxruntime, against PyTorch.

One export per family holds both TNorm paths: the identity (no camera ids) and the conversion
with camera ids and targets as graph inputs.
"""
from __future__ import annotations

import pytest
import torch

from tests.surgery.surgery_cases import fresh, images, randomize_norm_state
from timm_reid.layers import TNorm
from timm_reid.surgery import patch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class IdentityAndConversion(torch.nn.Module):
    """Exports `model(x)` and `model(x, camids=..., convert=True, targets=...)` as two outputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, camids, targets):
        return self.model(x), self.model(x, camids=camids, convert=True, targets=targets)


def with_distinct_camera_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Give every camera its own TNorm statistics so conversion visibly changes the features."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


@pytest.mark.parametrize("name", ["convnext-nhwc", "resnet-d-mixed"])  # the smallest of each family
def test_onnx_export_matches_pytorch(name, tmp_path):
    model = patch(randomize_norm_state(fresh(name)), aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=3)
    net = IdentityAndConversion(with_distinct_camera_stats(model)).eval()
    inputs = (images(), torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0, 2, 1]))
    names = ["x", "camids", "targets"]
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, inputs, str(path), input_names=names, output_names=["identity", "converted"], dynamo=True)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    identity, converted = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    with torch.no_grad():
        expected_identity, expected_converted = net(*inputs)
    assert not torch.allclose(expected_identity, expected_converted, atol=1e-3)  # conversion did something
    torch.testing.assert_close(torch.from_numpy(identity), expected_identity, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(converted), expected_converted, atol=1e-4, rtol=1e-4)
