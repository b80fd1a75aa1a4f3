"""Functional reference math: ``timm_reid.functional.aibn`` and ``timm_reid.functional.tnorm``."""
from .layers.functional import aibn, tnorm

__all__ = ["aibn", "tnorm"]
