"""Pretraining methods are methods of the pretraining protocol (timm_reid.pretrain.protocol): found
in the package's files, owning their flags and defaults; a toy module placed on the package's
search path by the test alone is a method that runs; another method's flag is refused naming it."""
import json
import sys
import textwrap

import pytest

import timm_reid.pretrain
from timm_reid._run import ConfigError
from timm_reid.pretrain import pretrain
from timm_reid.pretrain.__main__ import cli
from timm_reid.pretrain.config import get_args_parser, parse_args
from timm_reid.pretrain.methods import all_methods, get_method, method_names
from timm_reid.pretrain.protocol import MethodModule, missing_attributes

TOY = '''
"""A toy pretraining method: a feature-norm loss on random images."""
import torch
from torch import nn

from timm_reid.pretrain.engine import Task, build_backbone

NAME = "toy"
DEFAULTS = {"epochs": 1, "lr": 1e-3, "batch_size": 4}
DATA = "random images (--toy-steps N per epoch)"


def add_arguments(parser):
    g = parser.add_argument_group("method toy")
    g.add_argument("--toy-steps", default=2, type=int, help="steps per epoch")
    g.add_argument("--momentum", default=0.5, type=float, help="MoCo has a --momentum too")


def check(args):
    return [] if args.toy_steps >= 1 else [f"--toy-steps {args.toy_steps} must be >= 1"]


class ToyTask(Task):
    def __init__(self, args):
        self.modules = nn.ModuleDict({"backbone": build_backbone(args, None)})
        self.steps, self.size = args.toy_steps, (args.batch_size, 3, args.height, args.width)
        self.seen = 0

    def batches(self, epoch):
        return (torch.randn(self.size) for _ in range(self.steps))

    def num_batches(self):
        return self.steps

    def loss(self, batch):
        self.seen += 1
        return self.modules["backbone"](batch).pow(2).mean(), {}

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]

    def final_metrics(self, backbone):
        return {"batches_seen": self.seen}


def build_task(args, run_dir, pair_hook=None):
    return ToyTask(args)
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """``timm_reid/pretrain/toymethod.py`` without touching the package: a folder on its search path."""
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "toymethod.py").write_text(textwrap.dedent(TOY))
    monkeypatch.setattr(timm_reid.pretrain, "__path__", [*timm_reid.pretrain.__path__, str(folder)])
    sys.modules.pop("timm_reid.pretrain.toymethod", None)
    yield get_method("toy")
    sys.modules.pop("timm_reid.pretrain.toymethod", None)


def test_the_three_methods_are_found_and_follow_the_protocol():
    assert method_names() == ("supervised", "isr", "moco")
    for module in all_methods():
        assert isinstance(module, MethodModule) and not missing_attributes(module), module.__name__
        assert set(module.DEFAULTS) == {"epochs", "lr", "batch_size"}


def test_each_method_owns_its_defaults():
    for name, epochs, batch in (("supervised", 80, 64), ("isr", 20, 80), ("moco", 20, 80)):
        args = parse_args(["--method", name])
        from timm_reid.pretrain.config import resolve_args

        resolve_args(args)
        assert (args.epochs, args.batch_size) == (epochs, batch), name


@pytest.mark.parametrize("argv, match", [
    (["--method", "moco", "--gamma", "2"], r"--gamma \(method isr\) belong\(s\) to another method than --method moco"),
    (["--method", "isr", "--momentum", "0.5"], r"--momentum \(method moco\)"),
    (["--method", "isr", "--pad", "2"], r"--pad \(method supervised/moco\)"),
    (["--method", "supervised", "--num-videos", "3"], r"--num-videos \(method isr/moco\).*reads a labeled source"),
    (["--method", "isr", "--dataset", "market1501"], r"--dataset \(method supervised\).*--data DIR"),
])
def test_the_flag_of_another_method_is_refused_naming_it(tmp_path, capsys, argv, match):
    import re

    assert cli(argv + ["--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(match, err), err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_method_flag_as_ignored(tmp_path, capsys):
    """With --resume the method is the stored one: its flags are refused as flags resume would
    ignore, like every other option (not as unknown arguments)."""
    assert cli(["--resume", str(tmp_path / "run"), "--gamma", "2"]) == 2
    assert "would be ignored" in capsys.readouterr().err


def test_python_entry_refuses_another_methods_option_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"--gamma \(method isr\)"):
        pretrain("moco", output=tmp_path / "run", gamma=2.0)
    with pytest.raises(ConfigError, match="unknown pretraining option"):
        pretrain("moco", output=tmp_path / "run", gama=2.0)


def test_help_shows_every_method_group_once():
    text = get_args_parser().format_help()
    assert text.count("unlabeled video crops (--method isr / moco):") == 1
    for title in ("supervised source data (--method supervised):", "method isr:", "method moco:"):
        assert text.count(title) == 1, title


def test_a_toy_module_is_a_method_that_runs(toy_method, tmp_path):
    assert "toy" in method_names()
    args = parse_args(["--method", "toy", "--momentum", "0.2"])  # a flag name MoCo also has, its own here
    assert (args.momentum, args.toy_steps) == (0.2, 2) and not hasattr(args, "gamma")
    with pytest.raises(ConfigError, match=r"--toy-steps \(method toy\)"):
        parse_args(["--method", "isr", "--toy-steps", "3"])
    result = pretrain("toy", output=tmp_path / "run", model="test_convnext", height=64, width=32, threads=1,
                      no_progress=True, toy_steps=3)
    assert result["final"] == {"batches_seen": 3} and result["epochs"] == 1
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["final"] == {"batches_seen": 3}
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "toy_steps: 3" in config and "gamma" not in config and "num_videos" not in config
    with pytest.raises(ConfigError, match="--toy-steps 0 must be >= 1"):
        pretrain("toy", output=tmp_path / "bad", model="test_convnext", toy_steps=0)


def test_a_module_lacking_part_of_the_protocol_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "halfmethod.py").write_text('NAME = "half"\n\ndef build_task(args, run_dir, pair_hook=None):\n    pass\n')
    monkeypatch.setattr(timm_reid.pretrain, "__path__", [*timm_reid.pretrain.__path__, str(folder)])
    sys.modules.pop("timm_reid.pretrain.halfmethod", None)
    with pytest.raises(TypeError, match=r"'half'.*lacks DEFAULTS.*DATA.*add_arguments.*check"):
        get_method("half")
    sys.modules.pop("timm_reid.pretrain.halfmethod", None)


def test_data_problems_are_user_errors_and_code_errors_are_not(tmp_path, capsys, monkeypatch):
    loose = tmp_path / "crops"
    (loose / "videos").mkdir(parents=True)
    (loose / "videos" / "loose.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="--data .*loose.jpg"):  # a layout problem of the user's folder
        pretrain("isr", output=tmp_path / "run", data=str(loose), model="test_convnext", threads=1,
                 no_progress=True)
    isr = get_method("isr")

    def broken(*args, **kwargs):
        raise ValueError("a bug in the method")

    monkeypatch.setattr(isr, "build_task", broken)
    with pytest.raises(ValueError, match="a bug in the method"):  # a traceback, not "error: ..." and exit 2
        cli(["--method", "isr", "--output", str(tmp_path / "run2"), "--model", "test_convnext", "--no-progress"])
