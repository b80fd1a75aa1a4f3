"""Evaluation: feature extraction, the Market-1501 protocol metrics (mAP, CMC, mINP) and the
visible-infrared protocols (SYSU-MM01, RegDB), and :func:`evaluate_split`, the one evaluation of a
model on a dataset's test split under any of them."""

from .features import extract_features
from .metrics import evaluate
from .splits import PROTOCOLS, evaluate_split
from .visible_infrared import evaluate_regdb, evaluate_sysumm01

__all__ = ["PROTOCOLS", "evaluate", "evaluate_regdb", "evaluate_split", "evaluate_sysumm01", "extract_features"]
