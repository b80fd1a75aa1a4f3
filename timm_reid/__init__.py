"""timm-reid: camera-robust normalization (AIBN, TNorm) for person re-identification on timm."""
from . import functional, layers, models  # models: registers convnext_iso_* in timm's registry
from .factory import create_model
from .layers import AIBN, TNorm, cameras
from .surgery import Description, PatchedLayer, describe, patch

__version__ = "0.1.0"

__all__ = [
    "AIBN",
    "TNorm",
    "Description",
    "PatchedLayer",
    "cameras",
    "create_model",
    "describe",
    "functional",
    "layers",
    "patch",
    "__version__",
]
