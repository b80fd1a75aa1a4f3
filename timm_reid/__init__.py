"""timm-reid: camera-robust normalization (AIBN, TNorm) for person re-identification on timm."""
from . import cluster, evaluation, functional, layers, models  # models: registers convnext_iso_*
from .evaluation import evaluate, extract_features
from .backbone import load_backbone, save_backbone, save_hub_folder
from .factory import create_model
from .layers import AIBN, TNorm, cameras
from .options import OptionsMismatch, PatchOptions
from .surgery import Description, PatchedLayer, describe, patch, patch_options

__version__ = "0.2.0"

__all__ = [
    "AIBN",
    "TNorm",
    "Description",
    "OptionsMismatch",
    "PatchedLayer",
    "PatchOptions",
    "cameras",
    "cluster",
    "create_model",
    "describe",
    "evaluate",
    "evaluation",
    "extract_features",
    "functional",
    "layers",
    "load_backbone",
    "patch",
    "patch_options",
    "save_backbone",
    "save_hub_folder",
    "__version__",
]
