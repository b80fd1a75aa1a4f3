"""The pretraining methods, found in the package: a method is one module and nothing else.

A module of :mod:`timm_reid.pretrain` is a method when its top level assigns ``NAME = "<name>"``
and defines ``build_task`` (:mod:`timm_reid.pretrain.protocol` lists what else it provides); the
files are read without importing them (:func:`timm_reid._discovery.discover`), so adding
``timm_reid/pretrain/<name>.py`` makes ``--method <name>`` exist.

Order (``--method`` choices, ``--help`` groups): supervised, isr, moco, then any other by name.
"""

from __future__ import annotations

import sys
from functools import lru_cache

from timm_reid._discovery import discover, load_method
from timm_reid._run import ConfigError
from timm_reid.pretrain.protocol import REQUIRED

__all__ = ["all_methods", "get_method", "method_names"]

_FIRST = ("supervised", "isr", "moco")  # the order they were written in (and documented)


@lru_cache(maxsize=8)
def _discover(package_path):
    return discover(package_path, __package__, "build_task", kind="pretraining", first=_FIRST)


def method_names():
    """The ``--method`` names."""
    return tuple(_discover(tuple(sys.modules[__package__].__path__)))


def get_method(name):
    """The module of method ``name``; :class:`ConfigError` for an unknown name, ``TypeError`` for a
    module that lacks part of the protocol (a programming error in the method, named)."""
    return load_method(_discover(tuple(sys.modules[__package__].__path__)), name, REQUIRED, kind="pretraining",
                       protocol="timm_reid.pretrain.protocol", error=ConfigError)


def all_methods():
    """Every method module, in :func:`method_names` order."""
    return tuple(get_method(name) for name in method_names())
