"""Packaging metadata: SPDX license with its text, one version, console scripts that resolve."""
import importlib
import re
from pathlib import Path

import pytest

import timm_reid

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_spdx_with_the_full_text():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a string: the TOML table form is deprecated
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: the SPDX field only
    requires = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires)


def test_version_lives_in_one_place():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "timm_reid.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", timm_reid.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{timm_reid.__version__}] - " in changelog and "## [Unreleased]" in changelog


def test_console_scripts_resolve_to_callables():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"timm-reid-train", "timm-reid-evaluate", "timm-reid-synthetic", "timm-reid-pretrain"}
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_sdist_carries_the_tests_their_conftests_and_the_docs_the_readme_links(tmp_path):
    """Built from this checkout: every tracked test file (conftest.py included, without which
    collection fails), py.typed, the notebooks the tests run, and every local file README links."""
    import subprocess
    import sys
    import tarfile

    import shutil

    # a clean copy: setuptools adds the files listed by an existing *.egg-info/SOURCES.txt
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", "runs",
                                                                 "__pycache__", ".hypothesis", ".pytest_cache"))
    build = ("import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))")
    name = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=source, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")}
    assert {t for t in tests if t.endswith("conftest.py")} and tests <= members, sorted(tests - members)
    linked = set(re.findall(r"\]\(((?:docs|benchmarks|notebooks)/[^)#\s]+)\)", (ROOT / "README.md").read_text()))
    assert linked and linked <= members, sorted(linked - members)
    assert {"timm_reid/py.typed", "CHANGELOG.md", "notebooks/quickstart.ipynb"} <= members


def test_declared_torch_is_one_the_code_can_run_on():
    """The Triton path imports torch.library.wrap_triton, public since torch 2.6."""
    torch_req = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch>="))
    assert tuple(int(v) for v in torch_req.split(">=")[1].split(".")[:2]) >= (2, 6)
    import torch.library

    assert hasattr(torch.library, "wrap_triton") and hasattr(torch.library, "triton_op")


def test_onnx_extra_holds_what_export_needs():
    assert set(PYPROJECT["project"]["optional-dependencies"]["onnx"]) == {"onnx", "onnxscript"}
