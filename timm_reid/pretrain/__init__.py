"""Pretraining without downloads: ``python -m timm_reid.pretrain --method supervised|isr|moco``.

- ``supervised``: cross-entropy + batch-hard triplet on a labeled source dataset (or a synthetic
  source world), :mod:`timm_reid.pretrain.supervised`.

Every run leaves ``RUN/backbone.safetensors`` (:func:`timm_reid.load_backbone`). From Python:
``timm_reid.pretrain.pretrain("supervised", output="runs/src", epochs=80)``.
"""
from timm_reid.pretrain.config import METHODS, get_args_parser
from timm_reid.pretrain.run import main, pretrain
from timm_reid.pretrain.zero_shot import zero_shot

__all__ = ["METHODS", "get_args_parser", "main", "pretrain", "zero_shot"]
