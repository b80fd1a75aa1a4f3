"""Methods found in a package's files: a method is one module and nothing else (no registry).

Training (:mod:`timm_reid.train.methods`) and pretraining (:mod:`timm_reid.pretrain.methods`)
both find their methods here. A module is a method when its top level assigns ``NAME = "<name>"``
and defines ``marker`` (a class, a function or an assigned name: ``Trainer`` for training,
``build_task`` for pretraining). Files are read as syntax trees, not imported, so finding the
methods costs no import and a broken method breaks only its own ``--method``.
"""

from __future__ import annotations

import ast
import os
from importlib import import_module
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

__all__ = ["declared_name", "discover", "load_method", "missing_attributes"]


def declared_name(path, marker: str) -> Optional[str]:
    """The ``NAME`` a module file assigns at top level if it also defines ``marker``, else None."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    name, marked = None, False
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id == "NAME" and isinstance(node.value, ast.Constant):
                name = node.value.value if isinstance(node.value.value, str) else None
            if isinstance(target, ast.Name) and target.id == marker:
                marked = True
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == marker:
            marked = True
    return name if marked else None


def discover(folders: Iterable[str], package: str, marker: str, *, kind: str,
             first: Sequence[str] = ()) -> Dict[str, str]:
    """``{method name: dotted module}`` of the method modules in ``folders`` (the folders of
    ``package``), ordered ``first`` then by name; two modules of one name are a ``RuntimeError``
    naming both (``kind``: "training", "pretraining")."""
    found: Dict[str, str] = {}
    for folder in folders:
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            stem, ext = os.path.splitext(entry)
            if ext != ".py" or stem.startswith("_"):
                continue
            name = declared_name(os.path.join(folder, entry), marker)
            if name is None:
                continue
            module = f"{package}.{stem}"
            if name in found and found[name] != module:
                raise RuntimeError(f"two {kind} methods are named {name!r}: {found[name]} and {module}; "
                                   "rename one (its NAME)")
            found[name] = module
    rank = {name: i for i, name in enumerate(first)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def missing_attributes(module, required: Mapping[str, str]) -> list:
    """The ``required`` attributes ``module`` lacks, as ``"NAME (what it is)"`` strings."""
    return [f"{name} ({what})" for name, what in required.items() if not hasattr(module, name)]


def load_method(methods: Mapping[str, str], name: str, required: Mapping[str, str], *, kind: str,
                protocol: str, error: type):
    """The module of method ``name`` among ``methods`` (from :func:`discover`): ``error`` (the
    caller's user-error type) for an unknown name, ``TypeError`` for a module that lacks part of
    the protocol ``required`` (a programming error in the method, named with ``protocol``)."""
    if name not in methods:
        raise error(f"unknown --method {name!r}; valid methods: {', '.join(methods)}")
    module = import_module(methods[name])
    missing = missing_attributes(module, required)
    if missing:
        raise TypeError(f"{kind} method {name!r} ({module.__name__}) lacks {', '.join(missing)}; "
                        f"see {protocol}")
    return module
