"""timm-reid-evaluate (``timm_reid.evaluate_cli``): backbone files and checkpoints, clean errors."""
import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import timm_reid
from tests.train.tiny import TINY_DATA, tiny_argv
from timm_reid.data import ImageDataset, build_transforms
from timm_reid.data.synthetic import generate_synthetic, load_synthetic
from timm_reid.evaluate_cli import main

REPO = str(Path(__file__).resolve().parents[1])
SMALL = dict(seed=1, num_cameras=3, num_identities=6, num_test_identities=6, num_distractors=2, image_size=(64, 32))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate") / "synthetic"
    generate_synthetic(root, **SMALL)
    return root


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm_reid.create_model("test_convnext", aibn=[3, 4], tnorm=[1, 2], num_cameras=3, num_classes=0)
    path = tmp_path_factory.mktemp("backbone") / "backbone.safetensors"
    return timm_reid.save_backbone(model, str(path), model_name="test_convnext", input_size=(64, 32))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-round training run on synthetic data generated into RUN/data."""
    from timm_reid.train import main as train_main, parse_args

    run = tmp_path_factory.mktemp("train") / "run"
    train_main(parse_args(tiny_argv(run, "--synthetic-identities", str(TINY_DATA["num_identities"]),
                                    "--synthetic-test-identities", str(TINY_DATA["num_test_identities"]),
                                    "--synthetic-cameras", str(TINY_DATA["num_cameras"]))))
    return run


def _independent_map(model, dataset, size):
    """mAP of ``model`` on query vs gallery through extract_features + evaluate (not the CLI's path)."""
    records = dataset.query + dataset.gallery
    loader = torch.utils.data.DataLoader(ImageDataset(records, build_transforms(*size, train=False)), batch_size=64)
    features, pids, camids = timm_reid.extract_features(model, loader, progress=False)
    nq = len(dataset.query)
    result = timm_reid.evaluate(query_features=features[:nq], gallery_features=features[nq:], q_pids=pids[:nq],
                                g_pids=pids[nq:], q_camids=camids[:nq], g_camids=camids[nq:])
    return float(result["mAP"])


def test_the_evaluate_function_is_not_shadowed_by_a_module():
    importlib.import_module("timm_reid.evaluate_cli")
    assert timm_reid.evaluate is timm_reid.evaluation.evaluate and callable(timm_reid.evaluate)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("timm_reid.evaluate")
    assert timm_reid.evaluate is timm_reid.evaluation.evaluate


def test_help_shows_the_program_name(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/timm-reid-evaluate", "--help"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: timm-reid-evaluate") and "--backbone" in out and "--output-json" in out
    # python -m puts the module's file in argv[0]
    monkeypatch.setattr(sys, "argv", [os.path.join(REPO, "timm_reid", "evaluate_cli.py"), "--help"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith("usage: python -m timm_reid.evaluate_cli")


def test_synthetic_help_shows_program_name_and_defaults(monkeypatch, capsys):
    from timm_reid.data import synthetic

    monkeypatch.setattr(sys, "argv", ["/venv/bin/timm-reid-synthetic", "--help"])
    with pytest.raises(SystemExit):
        synthetic.main()
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: timm-reid-synthetic")
    for default in ("--num-cameras NUM_CAMERAS cameras (default: 5)", "(default: 150)", "(default: 1.0)",
                    "(default: (64, 32))", "(default: 0.25)"):
        assert default in out, default


def test_backbone_file_is_evaluated_at_its_stored_input_size(backbone_file, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["--backbone", backbone_file, "--data", str(synthetic_dir), "--threads", "1",
                 "--output-json", str(out)]) == 0
    metrics = json.loads(out.read_text())["test"]
    expected = _independent_map(timm_reid.load_backbone(backbone_file), load_synthetic(synthetic_dir, **SMALL),
                                (64, 32))
    assert metrics["mAP"] == pytest.approx(expected, abs=1e-6)
    assert "test: mAP=" in capsys.readouterr().out
    # the run directory form, an explicit layout and another size
    assert main(["--backbone", os.path.dirname(backbone_file), "--dataset", "market1501", "--root",
                 str(synthetic_dir), "--input-size", "96", "48", "--threads", "1", "--output-json", str(out),
                 "--overwrite"]) == 0
    assert json.loads(out.read_text())["test"]["mAP"] == pytest.approx(
        _independent_map(timm_reid.load_backbone(backbone_file), load_synthetic(synthetic_dir, **SMALL), (96, 48)),
        abs=1e-6)


def test_checkpoint_and_its_backbone_give_the_run_s_own_metrics(tiny_run, tmp_path):
    from timm_reid.evaluate_cli import _checkpoint_net

    final = json.loads((tiny_run / "final_metrics.json").read_text())["final"]
    ck_json, bb_json = tmp_path / "ck.json", tmp_path / "bb.json"
    assert main(["--checkpoint", str(tiny_run / "final.pth"), "--threads", "1", "--output-json", str(ck_json)]) == 0
    backbone_module, spec = _checkpoint_net(str(tiny_run / "final.pth"))  # the backbone alone
    backbone = timm_reid.save_backbone(backbone_module, str(tmp_path / "backbone.safetensors"),
                                       model_name="test_convnext", input_size=spec["input_size"])
    assert main(["--backbone", backbone, "--data", str(tiny_run / "data"), "--threads", "1",
                 "--output-json", str(bb_json)]) == 0
    for path in (ck_json, bb_json):
        assert json.loads(path.read_text())["test"]["mAP"] == pytest.approx(final["mAP"], abs=1e-6), path


def test_checkpoint_never_generates_synthetic_data_among_other_files(tiny_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"mine")
    assert main(["--checkpoint", str(tiny_run / "final.pth"), "--data", str(folder), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "not empty and is not a timm-reid synthetic dataset" in err and "Traceback" not in err
    assert sorted(os.listdir(folder)) == ["holiday.jpg"]
    # a new folder gets the run's synthetic data, as before
    assert main(["--checkpoint", str(tiny_run / "final.pth"), "--data", str(tmp_path / "new"), "--threads", "1"]) == 0
    assert (tmp_path / "new" / "meta.json").is_file()


def _garbage(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x80\x02not a checkpoint" * 10)
    return str(path)


@pytest.mark.parametrize("case", ["missing backbone", "garbage backbone", "no data", "unknown layout",
                                  "needs root", "foreign folder", "existing json", "batch size",
                                  "garbage checkpoint", "truncated checkpoint", "both models"])
def test_configuration_errors_exit_2_with_one_paragraph(case, backbone_file, synthetic_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (tmp_path / "done.json").write_text("{}")
    truncated = tmp_path / "truncated.pth"
    torch.save({"args": {}, "model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    bb, data = ["--backbone", backbone_file], ["--data", str(synthetic_dir)]
    argv, expected = {
        "missing backbone": (["--backbone", str(tmp_path / "nope.safetensors"), *data], "nope.safetensors"),
        "garbage backbone": (["--backbone", _garbage(tmp_path), *data], "not a readable timm-reid backbone"),
        "no data": (bb, "needs the data"),
        "unknown layout": ([*bb, "--dataset", "market", "--root", str(synthetic_dir)], "unknown layout"),
        "needs root": ([*bb, "--data", str(foreign)], "cannot tell the layout"),
        "foreign folder": ([*bb, "--dataset", "synthetic", "--root", str(foreign)], "not empty and is not a timm-reid"),
        "existing json": ([*bb, *data, "--output-json", str(tmp_path / "done.json")], "already exists"),
        "batch size": ([*bb, *data, "--batch-size", "0"], "--batch-size must be >= 1"),
        "garbage checkpoint": (["--checkpoint", _garbage(tmp_path)], "garbage.pth"),
        "truncated checkpoint": (["--checkpoint", str(truncated)], "truncated.pth"),
        "both models": ([*bb, "--checkpoint", "x.pth", *data], "not allowed with argument"),
    }[case]
    with pytest.raises(SystemExit) if case == "both models" else _no_exit() as info:
        code = main(argv)
    code = info.value.code if case == "both models" else code
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("python -m timm_reid.evaluate_cli: error: ") and expected in lines[-1]
    assert len(lines) == 1 or lines[0].startswith("usage:")  # argparse's own errors print the usage first
    assert sorted(os.listdir(foreign)) == ["notes.txt"] and (tmp_path / "done.json").read_text() == "{}"


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_evaluate_command_line_imports_no_training_code():
    """Every module it can import (lazy imports included, read from the source) is outside
    timm_reid.train and timm_reid.pretrain: evaluating needs the library, not the harness."""
    from tests.test_layout import import_graph

    graph = import_graph()
    seen, todo = set(), ["timm_reid.evaluate_cli"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    harness = sorted(m for m in seen if m.startswith(("timm_reid.train", "timm_reid.pretrain")))
    assert not harness, harness


@pytest.fixture(scope="module")
def vi_dir(tmp_path_factory):
    from timm_reid.data.synthetic import generate_synthetic_vi

    root = tmp_path_factory.mktemp("evaluate-vi") / "sysu"
    generate_synthetic_vi(root, seed=3, num_identities=4, num_test_identities=8, image_size=(32, 16))
    return root


def test_protocol_sysumm01_scores_the_visible_infrared_split(vi_dir, tmp_path, capsys):
    """``--protocol sysumm01``: the SYSU-MM01 layout and protocol, the metrics of
    ``evaluate_sysumm01`` on features extracted outside the command line."""
    from timm_reid.data import load_sysumm01
    from timm_reid.evaluation import evaluate_sysumm01

    torch.manual_seed(0)
    model = timm_reid.create_model("test_convnext", num_classes=0)
    backbone = timm_reid.save_backbone(model, str(tmp_path / "vi.safetensors"), model_name="test_convnext",
                                       input_size=(64, 32))
    out = tmp_path / "vi.json"
    assert main(["--backbone", backbone, "--root", str(vi_dir), "--protocol", "sysumm01", "--threads", "1",
                 "--output-json", str(out)]) == 0
    metrics = json.loads(out.read_text())["test"]
    dataset = load_sysumm01(vi_dir, name="synthetic-vi")
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.query + dataset.gallery,
                                                      build_transforms(64, 32, train=False)), batch_size=64)
    features, _, _ = timm_reid.extract_features(timm_reid.load_backbone(backbone), loader, progress=False)
    nq = len(dataset.query)
    expected = evaluate_sysumm01(features[:nq].numpy(), features[nq:].numpy(), dataset.query, dataset.gallery)
    assert metrics["mAP"] == pytest.approx(float(expected["mAP"]), abs=1e-6)
    assert metrics["protocol"] == expected["protocol"] and "same_camera_top1" not in metrics
    printed = capsys.readouterr().out
    assert "nan" not in printed and "same_camera_top1" not in printed
    # a layout the protocol does not read is refused, naming both
    assert main(["--backbone", backbone, "--dataset", "market1501", "--root", str(vi_dir),
                 "--protocol", "sysumm01"]) == 2
    assert "--protocol sysumm01 evaluates the sysumm01 layout" in capsys.readouterr().err


def test_protocol_defaults_to_the_checkpoint_s(tiny_run, tmp_path, capsys):
    """A checkpoint stores its method's protocol (``evaluation``): used without --protocol,
    replaced by --protocol."""
    state = torch.load(tiny_run / "final.pth", weights_only=True)
    assert state["evaluation"] == "reid"
    state["evaluation"] = "sysumm01"  # as a visible-infrared method's run stores it
    vi_checkpoint = tmp_path / "vi.pth"
    torch.save(state, vi_checkpoint)
    final = json.loads((tiny_run / "final_metrics.json").read_text())["final"]
    assert main(["--checkpoint", str(vi_checkpoint), "--root", str(tiny_run / "data"), "--threads", "1"]) == 2
    assert "SYSU-MM01 not found" in capsys.readouterr().err  # the run's Market-style data is no SYSU-MM01 folder
    out = tmp_path / "m.json"
    assert main(["--checkpoint", str(vi_checkpoint), "--protocol", "reid", "--threads", "1",
                 "--output-json", str(out)]) == 0
    assert json.loads(out.read_text())["test"]["mAP"] == pytest.approx(final["mAP"], abs=1e-6)
