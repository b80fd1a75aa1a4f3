"""Evaluation: feature extraction and the Market-1501 protocol metrics (mAP, CMC, mINP)."""

from .features import extract_features
from .metrics import evaluate

__all__ = ["evaluate", "extract_features"]
