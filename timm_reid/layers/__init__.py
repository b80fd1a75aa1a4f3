"""Normalization layers. Layers know nothing of models or the pipeline."""
from . import functional
from .aibn import AIBN
from .blend import BlendedAIBN
from .calibrate import calibrate_aibn
from .backend import get_backend, set_backend, use_backend
from .cameras import CameraContext, cameras, current_context
from .tnorm import TNorm

__all__ = [
    "AIBN",
    "BlendedAIBN",
    "TNorm",
    "CameraContext",
    "calibrate_aibn",
    "cameras",
    "current_context",
    "functional",
    "get_backend",
    "set_backend",
    "use_backend",
]
