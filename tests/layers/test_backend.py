"""backend="auto" is resolved once per device kind and global setting, not on every forward, and
the global overrides (set_backend, use_backend, TIMM_REID_KERNELS) still take effect."""
from __future__ import annotations

import pytest
import torch

from timm_reid.layers import AIBN, TNorm, backend, set_backend, use_backend


@pytest.fixture
def resolutions(monkeypatch):
    calls = []
    real = backend.resolve_backend

    def counting(requested, x):
        calls.append(requested)
        return real(requested, x)

    monkeypatch.setattr(backend, "resolve_backend", counting)
    yield calls
    set_backend(None)


@pytest.mark.parametrize("make", [lambda: AIBN(3), lambda: TNorm(3, 2, mode="normalize")])
def test_auto_is_resolved_once_and_follows_the_global_setting(make, resolutions, monkeypatch):
    layer = make().eval()
    x = torch.randn(2, 3, 4, 4)
    for _ in range(3):
        layer(x)
    assert len(resolutions) == 1 and backend.layer_backend(layer, x) == "reference"
    with use_backend("triton"):  # global change: resolved again, at the next forward
        assert backend.layer_backend(layer, x) == "triton"
    assert backend.layer_backend(layer, x) == "reference" and len(resolutions) == 3
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert backend.layer_backend(layer, x) == "reference"  # the environment is read at resolution time
    set_backend(None)
    assert backend.layer_backend(layer, x) == "triton"
    monkeypatch.setenv(backend.ENV_VAR, "bogus")
    set_backend(None)
    with pytest.raises(ValueError, match="TIMM_REID_KERNELS='bogus' is not valid"):
        layer(x)


def test_the_cache_is_per_device_kind_and_not_in_the_state_dict(resolutions):
    layer = AIBN(3).eval()
    layer(torch.randn(2, 3, 4, 4))
    assert backend.layer_backend(layer, torch.empty(1, device="meta")) == "reference"
    assert len(resolutions) == 2
    assert set(layer.state_dict()) == {"weight", "bias", "gate", "running_mean", "running_var"}
