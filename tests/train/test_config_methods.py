"""The harness's options: method groups in --help, presets of both methods, patch keywords
passed through to create_model generically."""
import argparse

import pytest

from timm_reid.train import pipeline
from timm_reid.train.config import get_args_parser, parse_args


def test_help_groups_options_under_each_method():
    text = get_args_parser().format_help()
    assert "method iics:" in text and "method ice:" in text
    iics, ice = text.index("method iics:"), text.index("method ice:")
    assert iics < text.index("  --intra-clusters", iics) < ice < text.index("  --min-samples", ice)
    # not listed before the method groups (GUR, between them by name, has its own --min-samples)
    assert text.index("  --min-samples") > min(iics, ice)
    assert "method gur:" in text and text.index("  --sigma") > text.index("method gur:")


@pytest.mark.parametrize("argv, method, preset", [
    ([], "iics", "demo"), (["--method", "ice"], "ice", "ice-demo"),
    (["--method", "ice", "--dataset", "market1501", "--root", "x"], "ice", "ice"),
    (["--preset", "ice-demo"], "ice", "ice-demo"),
])
def test_default_presets_follow_the_method(argv, method, preset):
    args = parse_args(argv)
    assert (args.method, args.preset) == (method, preset)


def test_patch_options_come_from_the_model_flags_generically(monkeypatch):
    from timm_reid.options import PatchOptions

    # only the model group's names count: "gate" is in it here, downsample and momentum are not
    monkeypatch.setattr(pipeline, "model_option_names",
                        lambda: {"aibn", "tnorm", "aibn_gate_init", "aibn_mix", "aibn_entry", "model", "gate"})
    args = argparse.Namespace(aibn=[3, 4], tnorm=[1], aibn_gate_init=0.2, aibn_mix="std", aibn_entry="replace",
                              model="resnet50", momentum=0.9, gate="layer", downsample=False)
    assert pipeline.patch_options(args, 5) == PatchOptions(aibn=(3, 4), tnorm=(1,), num_cameras=5, gate_init=0.2,
                                                           mix="std", entry="replace", gate="layer")
