"""The patch flags are defined once (timm_reid._cli.add_patch_arguments) for both command lines:
same names, defaults, types, choices and help in train's and pretrain's "model" group, each a
PatchOptions field that PatchOptions.from_flags reads back."""
import dataclasses

from timm_reid.options import PatchOptions
from timm_reid.pretrain.config import get_args_parser as pretrain_parser
from timm_reid.train.config import get_args_parser as train_parser

PATCH_FLAGS = ("--aibn", "--tnorm", "--aibn-mix", "--aibn-gate-init", "--aibn-entry", "--tnorm-mode", "--last-stride")


def _model_group(parser):
    group = next(g for g in parser._action_groups if g.title.startswith("model"))
    return {a.option_strings[0]: a for a in group._group_actions}


def test_train_and_pretrain_define_the_patch_flags_alike():
    train, pretrain = _model_group(train_parser(add_help=False)), _model_group(pretrain_parser(add_help=False))
    for flag in PATCH_FLAGS:
        a, b = train[flag], pretrain[flag]
        assert (a.dest, a.default, a.type, a.choices, a.nargs, a.help) == \
               (b.dest, b.default, b.type, b.choices, b.nargs, b.help), flag


def test_each_patch_flag_is_a_patch_option_with_its_default():
    fields = {f.name: f.default for f in dataclasses.fields(PatchOptions)}
    actions = _model_group(train_parser(add_help=False))
    for flag in PATCH_FLAGS:
        dest = actions[flag].dest
        field = next(k for k in (dest, dest.removeprefix("aibn_"), dest.removeprefix("tnorm_")) if k in fields)
        default = actions[flag].default
        assert (tuple(default) if isinstance(default, list) else default) == fields[field], flag
