"""Models timm lacks, registered in timm's registry on import (`timm.create_model` finds them).

`import timm_reid` imports this package, so `timm.create_model("convnext_iso_small")` works after it.
"""
from .convnext_iso import ConvNeXtIsotropic
from .dual_stream import ModalityRouted, dual_stream

__all__ = ["ConvNeXtIsotropic", "ModalityRouted", "dual_stream"]
