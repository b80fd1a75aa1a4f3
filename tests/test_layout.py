"""The layout rules of docs/DESIGN.md section 2, checked on the source: no import cycle in the
package, and ``kernels/`` (installed as ``timm_reid.kernels``) imports nothing else of timm_reid.

The import graph is read from the AST of every file (module-level and function-level imports
alike: a lazy import that closes a cycle is still a cycle for a reader). An edge goes to the most
specific module an import names: ``from timm_reid.data import layouts`` is an edge to
``timm_reid.data.layouts``, ``from timm_reid.data import build_dataset`` one to the package
``timm_reid.data``. Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those
implicit edges to parent packages are left out, as in pylint's cyclic-import check: a package that
imports its own submodules is not a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1]
# dotted package -> folder, as pyproject's package-dir maps them
PACKAGE_DIRS = {"timm_reid": ROOT / "timm_reid", "timm_reid.kernels": ROOT / "kernels"}


def _modules() -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _resolve(module: str, name: Optional[str], known: Set[str]) -> Optional[str]:
    """The most specific known module that ``from module import name`` (or ``import module``) names."""
    if name is not None and f"{module}.{name}" in known:
        return f"{module}.{name}"
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        base_parts = mod.split(".") if is_package else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: List[Optional[str]] = []
            if isinstance(node, ast.Import):
                targets = [_resolve(alias.name, None, known) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base_parts[: len(base_parts) - (node.level - 1)]
                    source = ".".join(parts + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [_resolve(source, alias.name, known) for alias in node.names]
            for target in targets:
                if target is not None and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None (iterative DFS, sorted order)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_relative_lazy_and_submodule_imports():
    graph = import_graph()
    assert "timm_reid.layers.functional" in graph["timm_reid.layers.aibn"]  # `from . import functional as F`
    assert "timm_reid.kernels" in graph["timm_reid.layers.backend"]  # lazy, inside triton_ops()
    assert "timm_reid.kernels._contract" in graph["timm_reid.kernels._tnorm"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_kernels_import_only_timm_reid_kernels():
    graph = import_graph()
    kernels = [m for m in graph if m == "timm_reid.kernels" or m.startswith("timm_reid.kernels.")]
    assert len(kernels) >= 4
    bad = {m: sorted(t for t in graph[m] if not t.startswith("timm_reid.kernels")) for m in kernels}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"kernels/ must depend on torch and triton only, found imports of {bad}"


# docs/DESIGN.md section 2, "Direction of dependencies": what each part may never import.
HARNESS = ("timm_reid.train", "timm_reid.pretrain")
NEVER = {
    "timm_reid.layers": ("timm_reid.surgery", "timm_reid.models", "timm_reid.data", "timm_reid.cluster",
                         "timm_reid.evaluation", *HARNESS),
    "timm_reid.cluster": ("timm_reid.surgery", "timm_reid.data", "timm_reid.evaluation", *HARNESS),
    "timm_reid.data": ("timm_reid.surgery", "timm_reid.cluster", "timm_reid.evaluation", *HARNESS),
    "timm_reid.evaluation": ("timm_reid.surgery", *HARNESS),
    "timm_reid.evaluate_cli": HARNESS,
    "timm_reid._run": ("timm_reid.surgery", *HARNESS),
    "timm_reid._runlock": HARNESS,
    "timm_reid._permissions": HARNESS,
    "timm_reid._cli": HARNESS,
    "timm_reid.pretrain": ("timm_reid.train",),
}
# The one stated crossing between the two harnesses: --init makes its starting point by pretraining
# (through the public timm_reid.pretrain, nothing inside it).
TRAIN_MAY_IMPORT = {"timm_reid.train.starting_points": ("timm_reid.pretrain",)}


def _inside(module, prefix):
    return module == prefix or module.startswith(prefix + ".")


def test_dependency_direction_of_the_design_document():
    graph = import_graph()
    bad = [f"{m} -> {t}" for part, never in NEVER.items() for m in graph if _inside(m, part)
           for t in sorted(graph[m]) if any(_inside(t, n) for n in never)]
    for m in (m for m in graph if _inside(m, "timm_reid.train")):
        allowed = TRAIN_MAY_IMPORT.get(m, ())
        bad += [f"{m} -> {t}" for t in sorted(graph[m])
                if _inside(t, "timm_reid.pretrain") and t not in allowed]
    assert not bad, "imports against docs/DESIGN.md section 2: " + "; ".join(bad)


def test_the_direction_check_sees_a_wrong_import():
    graph = {"timm_reid.data.layouts": {"timm_reid.train.pipeline"}}
    bad = [t for t in graph["timm_reid.data.layouts"] if any(_inside(t, n) for n in NEVER["timm_reid.data"])]
    assert bad == ["timm_reid.train.pipeline"]
