"""Evaluation: feature extraction, the Market-1501 protocol metrics (mAP, CMC, mINP) and the
visible-infrared protocols (SYSU-MM01, RegDB)."""

from .features import extract_features
from .metrics import evaluate
from .visible_infrared import evaluate_regdb, evaluate_sysumm01

__all__ = ["evaluate", "evaluate_regdb", "evaluate_sysumm01", "extract_features"]
