"""Kernel tests run on CPU under the Triton interpreter.

``TRITON_INTERPRET`` is read by ``@triton.jit`` when the kernel modules are imported, so it is set
here, before any test module of this directory imports ``timm_reid.kernels``. If another part of
the suite imported the kernels earlier without it (GPU-less CI: set ``TRITON_INTERPRET=1`` in the
environment or a root conftest), the kernel tests skip instead of failing on CPU tensors.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
