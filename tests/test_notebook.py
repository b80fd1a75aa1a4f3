"""The quickstart notebook runs from top to bottom (tiny settings), so it cannot rot.

The notebook reads ``TIMM_REID_QUICKSTART_TINY=1`` in its first code cell and then uses a dataset
of a few dozen images and one training round; ``TIMM_REID_QUICKSTART_DIR`` keeps its data and run
directory inside pytest's temporary folder.
"""
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install timm-reid[test])")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install timm-reid[test])")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install timm-reid[test])")

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMM_REID_QUICKSTART_TINY", "1")
    monkeypatch.setenv("TIMM_REID_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell

    outputs = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "tiny=True" in outputs
    assert "AIBN" in outputs and "TNorm" in outputs  # describe() table and the statistics printout
    assert "camera R^2" in outputs
    assert os.path.isfile(tmp_path / "run" / "final_metrics.json")
    assert os.path.isfile(tmp_path / "run" / "curves.png")
