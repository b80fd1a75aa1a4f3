"""Shared test helpers."""
from __future__ import annotations

import torch

# Tolerances for outputs computed from fp32 statistics, per input dtype: (atol, rtol).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),  # output rounding to 11 mantissa bits of values ~O(1)
    torch.bfloat16: (1.6e-2, 1.6e-2),  # output rounding to 8 mantissa bits
}
# Parameter gradients are fp32 sums over N*H*W terms whatever the input dtype.
PARAM_TOL = (1e-4, 1e-4)


def import_interpreted_kernels():
    """``timm_reid.kernels`` for a test module that runs the kernels under ``TRITON_INTERPRET=1``
    (the module sets it before anything imports triton); skips the module when triton is missing or
    was imported before the interpreter was switched on."""
    import pytest

    kernels = pytest.importorskip("timm_reid.kernels")
    from timm_reid.kernels import _utils

    if not _utils.INTERPRET:
        pytest.skip("timm_reid.kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
    return kernels


def assert_verbose_allclose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = "") -> None:
    """allclose with a report that locates the mismatch: count, first indices, NaN/inf separately."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        raise AssertionError(f"{what}: NaN mismatch at {torch.nonzero(nan_a ^ nan_e)[:5].tolist()}")
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    if not torch.equal(inf_a & (a > 0), inf_e & (e > 0)) or not torch.equal(inf_a & (a < 0), inf_e & (e < 0)):
        raise AssertionError(f"{what}: inf mismatch")
    finite = ~(nan_a | inf_a)
    diff = (a - e).abs()
    bad = finite & (diff > atol + rtol * e.abs())
    if bad.any():
        idx = torch.nonzero(bad)[:5].tolist()
        first = tuple(idx[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ (atol={atol}, rtol={rtol}); "
            f"max abs diff {diff[finite].max().item():.3g}; first at {idx}: actual {a[first].item():.6g} "
            f"expected {e[first].item():.6g}"
        )
