"""benchmarks/gpu_check.py on a machine without CUDA, and its bare-checkout import path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    assert not out.exists()


def test_bad_command_lines_exit_2_without_a_traceback(tmp_path):
    existing = tmp_path / "mine.json"
    existing.write_text("{}")
    for args in (["--out", str(existing)], ["--stages", "tests,speed"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert existing.read_text() == "{}"  # never overwritten


BARE_CHECKOUT = """
import importlib.util, sys
# drop the editable install: what a fresh clone on the GPU machine looks like
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
try:
    importlib.util.find_spec("timm_reid.kernels")
    raise SystemExit("the editable install is still visible: this would not test a bare checkout")
except ModuleNotFoundError:
    pass
spec = importlib.util.spec_from_file_location("gpu_check", sys.argv[1])
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)
gpu_check.ensure_importable()
import timm_reid
from timm_reid import kernels
from timm_reid.kernels import _contract
print(kernels.__file__)
print(timm_reid.layers.TNorm(3, 2).mode, _contract.TNORM_MODES)
"""


def test_kernels_package_is_registered_from_a_bare_checkout():
    proc = subprocess.run([sys.executable, "-c", BARE_CHECKOUT, str(SCRIPT)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[-2:]
    assert Path(first) == ROOT / "kernels" / "__init__.py"
    assert second == "transform ('transform', 'normalize')"


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paths_stage_runs_on_cpu_at_small_sizes():
    """The stage that times the new paths on a GPU, run here on CPU: every part reports."""
    report = _gpu_check_module().stage_paths(device="cpu", cluster_n=300, agreement_n=200, batch=2, image=(64, 32),
                                             models=("resnet18",), reps=1)
    assert report["ok"] and report["ice_clustering"]["same_partition_as_cpu"]
    assert report["ice_clustering"]["n"] == 300 and report["ice_clustering"]["clusters"] >= 1
    step = report["blend_training_step"]["resnet18"]
    assert step["unpatched_ms"] > 0 and step["blend_reference_ms"] > 0 and "blend_triton_ms" not in step
    assert report["aibn_torch_path"]["aibn_torch_over_batchnorm2d"] > 0
    assert "CUDA" in report["blend_op"]["skipped"]  # the fused blend op is timed on a GPU only


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_paths_stage_is_a_known_stage_and_needs_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.json"), "--stages", "paths"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout, proc.stderr
