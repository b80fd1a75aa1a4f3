"""Unsupervised training: the methods of :mod:`timm_reid.train.protocol` (IICS with the IIDS
options, ICE) in one harness.

Command line: ``python -m timm_reid.train --help``. From Python::

    from timm_reid.train import get_args_parser, main, parse_args
    result = main(parse_args(["--preset", "demo", "--rounds", "2", "--output", "runs/x"]))
    result["final"]["mAP"]
"""

from timm_reid.train.config import get_args_parser, parse_args
from timm_reid.train.pipeline import main

__all__ = ["get_args_parser", "parse_args", "main"]
