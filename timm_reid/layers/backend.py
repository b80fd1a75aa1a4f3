"""Which implementation the AIBN and TNorm modules run: Triton kernels or the torch path.

Resolution order: the module's own ``backend=`` argument (if not ``"auto"``), then
:func:`use_backend` / :func:`set_backend`, then the environment variable ``TIMM_REID_KERNELS``
(``auto``, ``triton`` or ``reference``), then ``auto``: CUDA tensors run the Triton kernels, CPU
tensors the torch path ("reference": the reference math, with an analytic backward).
``triton`` on CPU tensors runs the kernels under ``TRITON_INTERPRET=1`` (how the tests run them).

A layer resolves its choice once per device kind and global setting, not on every forward
(:func:`layer_backend`): the result is cached on the layer, keyed by the device type of the input
and a counter that :func:`set_backend` and :func:`use_backend` advance. So moving a layer to
another device, or changing the global default, takes effect at the next forward;
``TIMM_REID_KERNELS`` is read at those moments (set it before the process starts, or call
``set_backend(None)`` after changing it).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "resolve_backend", "layer_backend"]

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TIMM_REID_KERNELS"
_override: Optional[str] = None
_generation = 0  # advanced by every change of the global default: invalidates the layers' caches
_CACHE_ATTR = "_resolved_backend"


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
    global _override, _generation
    _override = None if name is None else check_backend(name)
    _generation += 1


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily set the global default backend."""
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


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


def layer_backend(layer: torch.nn.Module, x: torch.Tensor) -> str:
    """:func:`resolve_backend` for ``layer.backend`` and ``x``, cached on the layer per device type
    and global setting (a dict entry, not a buffer: it never reaches a state dict)."""
    key = (_generation, x.device.type)
    cached = layer.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] == key:
        return cached[1]
    name = resolve_backend(layer.backend, x)
    if not torch.compiler.is_compiling():  # a compiled graph guards on its own inputs
        layer.__dict__[_CACHE_ATTR] = (key, name)
    return name


def triton_ops():
    """The kernels package, imported on first use so CPU-only installs never import triton."""
    from timm_reid import kernels

    return kernels
