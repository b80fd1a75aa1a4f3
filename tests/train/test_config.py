"""Options: presets, YAML files and flags, and early errors for inconsistent options."""
import pytest

from timm_reid.train.config import check_args, get_args_parser, parse_args, save_config
from timm_reid.train.methods import method_names, preset_names


@pytest.mark.parametrize("method", method_names())
def test_help_documents_every_option_with_its_default(method):
    text = get_args_parser().format_help()  # every method's group, whichever parses
    for action in get_args_parser(method=method)._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[-1] in text
            assert action.help, f"{action.dest} has no help text"


# Methods that cannot run on the built-in synthetic data name a dataset (no file is read here).
NAMED_DATA = {"gur": ["--dataset", "sysumm01", "--root", "DIR"]}


@pytest.mark.parametrize("preset", preset_names())
def test_presets_load(preset):
    from timm_reid.train.methods import preset_owner

    args = parse_args(["--preset", preset, *NAMED_DATA.get(preset_owner(preset).NAME, [])])
    check_args(args)
    assert args.preset == preset


def test_precedence_preset_then_config_file_then_flags(tmp_path):
    assert parse_args([]).preset == "demo"  # no data: the demo
    assert parse_args(["--dataset", "market1501", "--root", "x"]).preset == "iics"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 3\nlr: 0.123\n")
    args = parse_args(["--preset", "demo", "--config", str(cfg), "--lr", "0.5"])
    assert (args.rounds, args.lr, args.model) == (3, 0.5, "convnext_atto")


def test_unknown_yaml_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("roundz: 3\n")
    with pytest.raises(ValueError, match="roundz"):
        parse_args(["--config", str(cfg)])


def test_resolved_config_round_trips(tmp_path):
    args = parse_args(["--aibn", "3", "4", "--stages", "intra"])
    save_config(args, tmp_path / "config.yaml")
    again = parse_args(["--config", str(tmp_path / "config.yaml")])
    assert {**vars(again), "config": None} == {**vars(args), "config": None}


@pytest.mark.parametrize("argv, match", [
    (["--tnorm", "--convert-prob", "0.5"], "TNorm"),
    (["--tnorm", "--camera-aggregate"], "TNorm"),
    (["--intra-clusters", "0"], "intra-clusters"),
    (["--batch-size", "30", "--num-instances", "4"], "multiple"),
    (["--rounds", "0"], "rounds"),
    (["--head-temperature", "0"], "head-temperature"),
])
def test_inconsistent_options_fail_early(argv, match):
    with pytest.raises(ValueError, match=match):
        check_args(parse_args(argv))
