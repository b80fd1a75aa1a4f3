"""timm-reid: camera-robust normalization (AIBN, TNorm) for person re-identification on timm."""
from . import functional, layers
from .layers import AIBN, TNorm, cameras

__version__ = "0.1.0"

__all__ = ["AIBN", "TNorm", "cameras", "functional", "layers", "__version__"]
