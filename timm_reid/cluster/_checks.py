"""Input validation shared by the clustering, re-ranking and evaluation code.

Every public function of `timm_reid.cluster` and `timm_reid.evaluation` accepts torch tensors and
NumPy arrays alike; these helpers convert without copying where possible and raise errors that name
the argument, the offending values and the fix.
"""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(value, name: str, *, device=None) -> torch.Tensor:
    """`value` as a tensor sharing memory with NumPy input; TypeError for anything else."""
    if isinstance(value, torch.Tensor):
        return value if device is None else value.to(device)
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        return tensor if device is None else tensor.to(device)
    if isinstance(value, (list, tuple)):
        return torch.as_tensor(value, device=device)
    raise TypeError(
        f"{name} must be a torch.Tensor, a numpy.ndarray or a list, got {type(value).__name__}"
    )


def as_labels(value, name: str, *, length: int | None = None, device=None) -> torch.Tensor:
    """Integer ids (person or camera) as a 1-D int64 tensor of the expected length."""
    tensor = as_tensor(value, name, device=device)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {tensor.dtype}")
    if length is not None and tensor.numel() != length:
        raise ValueError(
            f"{name} has {tensor.numel()} entries but {length} were expected "
            "(one per row/column of the matching features or distances)"
        )
    return tensor.long()


def as_float_matrix(value, name: str, *, square: bool = False, device=None) -> torch.Tensor:
    """A non-empty 2-D floating tensor (NaN is checked separately, chunk by chunk)."""
    tensor = as_tensor(value, name, device=device)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {tensor.dtype}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); nothing to compare")
    if square and tensor.shape[0] != tensor.shape[1]:
        raise ValueError(
            f"{name} must be a square all-vs-all distance matrix, got shape {tuple(tensor.shape)}"
        )
    return tensor


def check_no_nan(block: torch.Tensor, name: str, row_offset: int = 0) -> None:
    """Raise naming the first row holding NaN; NaN has no place in a ranking."""
    nan_rows = torch.isnan(block).any(dim=1).nonzero()
    if nan_rows.numel():
        first = int(nan_rows[0]) + row_offset
        raise ValueError(
            f"{name} contains NaN (first in row {first}); check the features for NaN/inf "
            "(e.g. L2-normalising an all-zero vector) before ranking or clustering"
        )


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
