"""Which implementation the AIBN and TNorm modules run: Triton kernels or the torch path.

Resolution order: the module's own ``backend=`` argument (if not ``"auto"``), then
:func:`use_backend` / :func:`set_backend`, then the environment variable ``TIMM_REID_KERNELS``
(``auto``, ``triton`` or ``reference``), then ``auto``: CUDA tensors run the Triton kernels, CPU
tensors the torch path ("reference": the reference math, with an analytic backward).
``triton`` on CPU tensors runs the kernels under ``TRITON_INTERPRET=1`` (how the tests run them).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "resolve_backend"]

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TIMM_REID_KERNELS"
_override: Optional[str] = None


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The global default: :func:`set_backend` if called, else ``$TIMM_REID_KERNELS``, else auto."""
    if _override is not None:
        return _override
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not valid; use one of {BACKENDS}")
    return value


def set_backend(name: Optional[str]) -> None:
    """Set the global default backend (``None`` returns to ``$TIMM_REID_KERNELS``)."""
    global _override
    _override = None if name is None else check_backend(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily set the global default backend."""
    global _override
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = previous


def resolve_backend(requested: str, x: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"`` for this module setting and input tensor."""
    name = requested if requested != "auto" else get_backend()
    if name == "auto":
        name = "triton" if x.is_cuda else "reference"
    if name == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "the triton backend was requested for a CPU tensor; Triton runs on CPU only under "
            "TRITON_INTERPRET=1 (set it before importing triton) - or use backend='reference'"
        )
    return name


def triton_ops():
    """The kernels package, imported on first use so CPU-only installs never import triton."""
    from timm_reid import kernels

    return kernels
