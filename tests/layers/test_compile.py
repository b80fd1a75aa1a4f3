"""torch.compile of the layers on CPU gives the eager values (forward, backward, buffers).

One compiled module holds all three layer kinds: compilation dominates the cost of this test.
"""
from __future__ import annotations

import torch
from torch import nn

from timm_reid.layers import AIBN, TNorm


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.aibn = AIBN(6, gate_init=0.4)
        self.normalize = TNorm(6, 3, mode="normalize")
        self.transform = TNorm(6, 3)

    def forward(self, x, camids, targets):
        x = self.aibn(x)
        x = self.normalize(x, camids)
        return self.transform(x, camids, convert=True, targets=targets)


def run(model, x, camids, targets):
    x = x.clone().requires_grad_()
    y = model(x, camids, targets)
    y.pow(2).sum().backward()
    return y.detach(), x.grad


def test_compiled_layers_match_eager():
    torch.manual_seed(0)
    eager = Stack().train()
    compiled_model = Stack().train()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="inductor")
    x = torch.randn(4, 6, 5, 3)
    camids, targets = torch.tensor([0, 2, 2, 0]), torch.tensor([1, 1, 0, 2])
    y_e, dx_e = run(eager, x, camids, targets)
    y_c, dx_c = run(compiled, x, camids, targets)
    torch.testing.assert_close(y_c, y_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx_c, dx_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_model.aibn.gate.grad, eager.aibn.gate.grad, atol=1e-5, rtol=1e-5)
    for name, buf in eager.named_buffers():
        torch.testing.assert_close(compiled_model.get_buffer(name), buf, msg=name)
    eager.eval(), compiled_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, camids, targets), eager(x, camids, targets), atol=1e-5, rtol=1e-5)
