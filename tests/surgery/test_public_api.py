"""The public names of the package, as users import them (`timm_reid/__init__.py` re-exports them)."""
from __future__ import annotations

import subprocess
import sys

import timm_reid
from timm_reid import factory, surgery


def test_patch_describe_and_create_model_are_exported():
    assert timm_reid.patch is surgery.patch
    assert timm_reid.describe is surgery.describe
    assert timm_reid.create_model is factory.create_model


def test_importing_timm_reid_registers_the_isotropic_convnext_in_timm():
    """A fresh interpreter: only `import timm_reid` may register the models, nothing the tests did."""
    code = "import timm, timm_reid; m = timm.create_model('convnext_iso_test'); print(type(m).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ConvNeXtIsotropic"
