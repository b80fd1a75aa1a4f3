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
    assert set(scripts) == {"timm-reid-train", "timm-reid-evaluate", "timm-reid-synthetic"}
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
