"""A new method needs one module and nothing else (timm_reid.train.protocol): a toy method module,
placed in the package's search path by the test alone, gets its flags (even one ICE also has),
its presets and a run of the harness, while the other methods' flags are refused naming them."""
import json
import sys
import textwrap

import pytest

import timm_reid.train
from tests.train.tiny import TINY_DATA
from timm_reid.train import main, parse_args
from timm_reid.train.config import get_args_parser
from timm_reid.train.errors import ConfigError
from timm_reid.train.methods import get_method, method_names, preset_names
from timm_reid.train.protocol import MethodModule

TOY = '''
"""A toy method: every step is one SGD step of a feature-norm loss on one batch of train images."""
import argparse

import torch
from torch.utils.data import DataLoader

from timm_reid.data import ImageDataset
from timm_reid.train.errors import ConfigError

NAME = "toy"
PRESETS = {"toy-demo": "toy-demo.yaml"}
DEFAULT_PRESETS = ("toy-demo", "toy-demo")
EVALUATION = "EVALUATION_HERE"


def add_arguments(parser):
    g = parser.add_argument_group("method toy", "a toy method")
    g.add_argument("--epochs", default=1, type=int, help="toy steps (ICE has an --epochs too)")
    g.add_argument("--toy-scale", default=1.0, type=float, help="loss scale")


def check(args):
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")


def check_data(args, dataset):
    pass


class Trainer:
    def __init__(self, ctx, args):
        self.ctx, self.epochs, self.scale = ctx, args.epochs, args.toy_scale
        self.net = ctx.make_net()
        self.num_rounds = self.epochs
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-3)

    def start(self):
        return (0,)

    def done(self, position):
        return position[0] >= self.epochs

    def step_seed(self, position):
        return 1000 + position[0]

    def describe(self, position):
        return f"toy step {position[0] + 1}"

    def step(self, position):
        images, _, _, _ = next(iter(DataLoader(ImageDataset(self.ctx.dataset.train[:8], self.ctx.train_tf),
                                               batch_size=8)))
        self.net.train()
        loss = self.scale * self.net(images.to(self.ctx.device)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"toy_loss": loss.item()}, (position[0] + 1,), position[0] + 1

    def state_dict(self):
        return {"model": self.net.state_dict(), "head_sizes": []}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["model"])

    def summary(self):
        return {"toy": True}
'''

TOY_PRESET = "model: test_convnext\nheight: 64\nwidth: 32\naibn: [3]\nepochs: 2\neval_every: 0\n"


@pytest.fixture
def toy_method(request, tmp_path, monkeypatch):
    """``timm_reid/train/toymethod.py`` without touching the package: a folder on its search path."""
    folder = tmp_path / "methods"
    folder.mkdir()
    evaluation = getattr(request, "param", "reid")  # the protocol the toy declares
    (folder / "toymethod.py").write_text(textwrap.dedent(TOY).replace("EVALUATION_HERE", evaluation))
    (folder / "toy-demo.yaml").write_text(TOY_PRESET)
    monkeypatch.setattr(timm_reid.train, "__path__", [*timm_reid.train.__path__, str(folder)])
    yield
    sys.modules.pop("timm_reid.train.toymethod", None)


def test_the_shipped_methods_follow_the_protocol():
    for name in method_names():
        assert isinstance(get_method(name), MethodModule)


def test_a_toy_module_is_a_method_with_its_flags_and_presets(toy_method):
    assert "toy" in method_names() and "toy-demo" in preset_names()
    args = parse_args(["--method", "toy"])
    assert (args.preset, args.epochs, args.model) == ("toy-demo", 2, "test_convnext")  # its own preset
    assert parse_args(["--preset", "toy-demo"]).method == "toy"  # the preset names its method
    assert parse_args(["--method", "toy", "--epochs", "5"]).epochs == 5
    assert parse_args(["--method", "ice", "--epochs", "5"]).epochs == 5  # the same flag name, no clash
    assert not hasattr(args, "rounds") and not hasattr(args, "iters")
    text = get_args_parser().format_help()
    assert "method toy:" in text and "--toy-scale" in text and "method ice:" in text


def test_the_flag_of_another_method_is_refused_naming_it(toy_method):
    with pytest.raises(ConfigError, match=r"--rounds belong\(s\) to another method than --method toy .*method iics"):
        parse_args(["--method", "toy", "--rounds", "2"])
    with pytest.raises(ConfigError, match=r"--toy-scale .*\(method toy\)"):
        parse_args(["--method", "ice", "--toy-scale", "2"])
    with pytest.raises(ConfigError, match="--preset toy-demo is a preset of method toy"):
        parse_args(["--method", "iics", "--preset", "toy-demo"])


def test_a_module_missing_part_of_the_protocol_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "halfmethod.py").write_text('NAME = "half"\n\nclass Trainer:\n    pass\n')
    monkeypatch.setattr(timm_reid.train, "__path__", [*timm_reid.train.__path__, str(folder)])
    try:
        with pytest.raises(TypeError, match="lacks PRESETS .*add_arguments"):
            get_method("half")
    finally:
        sys.modules.pop("timm_reid.train.halfmethod", None)


@pytest.mark.parametrize("toy_method", ["reid", "regdb"], indirect=True)
def test_the_harness_runs_a_toy_method(toy_method, tmp_path):
    """...and evaluates it with its own protocol (RegDB here: the query split against the gallery)."""
    run = tmp_path / "run"
    result = main(parse_args(["--method", "toy", "--output", str(run), "--synthetic-identities",
                              str(TINY_DATA["num_identities"]), "--synthetic-test-identities",
                              str(TINY_DATA["num_test_identities"]), "--synthetic-cameras", "3",
                              "--batch-size", "8", "--test-batch-size", "64", "--threads", "1", "--no-progress",
                              "--no-plots"]))
    assert (result["method"], result["rounds"], result["toy"]) == ("toy", 2, True)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2] and all(h["toy_loss"] > 0 for h in history)
    assert 0 <= result["final"]["mAP"] <= 1 and (run / "backbone.safetensors").is_file()
    protocol = get_method("toy").EVALUATION
    assert result["final"].get("protocol") == (None if protocol == "reid" else "regdb-visible-to-thermal")
    assert ("same_camera_top1" in result["final"]) == (protocol == "reid")
    assert "epochs: 2" in (run / "config.yaml").read_text() and "rounds" not in (run / "config.yaml").read_text()
