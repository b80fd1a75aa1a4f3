"""Shared by the notebook builders: cells -> notebook, optional execution, write.

Each notebook reads ``TIMM_REID_<NAME>_TINY=1`` (tiny settings: seconds, numbers meaningless) and
``TIMM_REID_<NAME>_DIR`` (where it writes data and runs) in its first code cell.
"""
import argparse
import os
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def build(cells):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb, *, env_prefix, tiny, timeout=3600):
    """Execute ``nb`` in place (a fresh kernel; its work folder a temporary directory)."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="timm_reid_nb_") as work:
        os.environ[f"{env_prefix}_TINY"] = "1" if tiny else "0"
        os.environ[f"{env_prefix}_DIR"] = work
        os.environ.setdefault("MPLBACKEND", "Agg")
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
    return nb


def main(cells, *, path, env_prefix, description, argv=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--execute", action="store_true", help="execute the notebook and keep the outputs")
    p.add_argument("--tiny", action="store_true", help=f"with --execute: tiny settings ({env_prefix}_TINY=1), "
                                                        "how the stored notebook is executed")
    p.add_argument("--out", default=path)
    args = p.parse_args(argv)
    nb = build(cells)
    if args.execute:
        execute(nb, env_prefix=env_prefix, tiny=args.tiny)
    nbformat.validate(nb)
    nbformat.write(nb, args.out)
    print(f"wrote {args.out}")
