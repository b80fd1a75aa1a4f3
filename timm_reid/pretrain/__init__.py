"""Pretraining without downloads: ``python -m timm_reid.pretrain --method supervised|isr|moco``.

- ``supervised``: cross-entropy + batch-hard triplet on a labeled source dataset (or a synthetic
  source world), :mod:`timm_reid.pretrain.supervised`;
- ``isr`` and ``moco``: self-supervised on unlabeled video crops, :mod:`timm_reid.pretrain.isr`,
  :mod:`timm_reid.pretrain.moco` (tasks in :mod:`timm_reid.pretrain.video_tasks`).

Each is a method of the pretraining protocol (:mod:`timm_reid.pretrain.protocol`): one module
with its flags, defaults, checks and ``build_task``, found by :mod:`timm_reid.pretrain.methods`.

Every run leaves ``RUN/backbone.safetensors`` (:func:`timm_reid.load_backbone`). From Python:
``timm_reid.pretrain.pretrain("supervised", output="runs/src", epochs=80)``.
"""
from timm_reid.pretrain.config import METHODS, get_args_parser
from timm_reid.pretrain.run import main, pretrain
from timm_reid.pretrain.zero_shot import zero_shot

__all__ = ["METHODS", "get_args_parser", "main", "pretrain", "zero_shot"]
