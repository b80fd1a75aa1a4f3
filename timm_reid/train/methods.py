"""The training methods, found in the package: a method is one module and nothing else.

A module of :mod:`timm_reid.train` is a method when its top level assigns ``NAME = "<name>"`` and
defines ``Trainer`` (:mod:`timm_reid.train.protocol` lists what else it provides). Modules are
found by reading the package's files (their syntax tree, without importing them;
:func:`timm_reid._discovery.discover`, shared with pretraining) and imported only when asked
for, so adding ``timm_reid/train/gur.py`` makes ``--method gur`` exist; there is no registry to edit.

Order (``--method`` choices, ``--help`` groups): :data:`DEFAULT_METHOD` first, then by name.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from timm_reid._discovery import discover, load_method
from timm_reid.train.errors import ConfigError
from timm_reid.train.protocol import REQUIRED

__all__ = ["DEFAULT_METHOD", "all_methods", "get_method", "method_names", "preset_names", "preset_owner",
           "preset_path"]

DEFAULT_METHOD = "iics"


def _package_path():
    # The package is always imported before its submodules; reading its __path__ at call time
    # (not at import) lets a test extend it with a folder holding a toy method.
    return tuple(sys.modules[__package__].__path__)


@lru_cache(maxsize=8)
def _discover(package_path):
    """``{method name: dotted module}`` of the method modules in ``package_path``'s folders."""
    return discover(package_path, __package__, "Trainer", kind="training", first=(DEFAULT_METHOD,))


def method_names():
    """The ``--method`` names, default first."""
    return tuple(_discover(_package_path()))


def get_method(name):
    """The module of method ``name``; :class:`ConfigError` for an unknown name, ``TypeError`` for a
    module that lacks part of the protocol (a programming error in the method, named)."""
    return load_method(_discover(_package_path()), name, REQUIRED, kind="training",
                       protocol="timm_reid.train.protocol", error=ConfigError)


def all_methods():
    """Every method module, default first."""
    return tuple(get_method(name) for name in method_names())


def preset_owner(preset):
    """The method module whose ``PRESETS`` holds ``preset``; :class:`ConfigError` naming the valid
    presets otherwise. Preset names are unique across methods (a clash is an error)."""
    owners = {}
    for method in all_methods():
        for name in method.PRESETS:
            if name in owners:
                raise RuntimeError(f"preset {name!r} is declared by both method {owners[name].NAME} and method "
                                   f"{method.NAME}; rename one")
            owners[name] = method
    if preset not in owners:
        raise ConfigError(f"unknown --preset {preset!r}; valid presets: "
                          + "; ".join(f"{m.NAME}: {', '.join(m.PRESETS)}" for m in all_methods()))
    return owners[preset]


def preset_names():
    """Every preset name, by method (default method first)."""
    return tuple(name for method in all_methods() for name in method.PRESETS)


def preset_path(preset):
    """The YAML file of ``preset``: its method's ``PRESETS`` entry, relative to the method's folder."""
    method = preset_owner(preset)
    return Path(method.__file__).parent / method.PRESETS[preset]
