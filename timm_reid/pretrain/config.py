"""Command-line options of ``python -m timm_reid.pretrain``: parser, method defaults and checks.

The shared groups (run, model, schedule) are defined here; each method adds its own groups from its
module (:mod:`timm_reid.pretrain.protocol`). A command line is read by a parser of the shared groups
and the chosen method's groups only (:func:`parse_args`), so a flag of another method is refused
naming the method(s) it belongs to. The schedule options whose default depends on the method are
``None`` in the parser and resolved from the method's ``DEFAULTS`` by :func:`resolve_args`; the
resolved options are stored in the run's ``config.yaml`` (``config.json`` in older folders) and in
every checkpoint, so ``--resume`` continues with exactly them.
"""
from __future__ import annotations

import argparse
import math
import sys

from timm_reid._cli import add_patch_arguments, default_device, method_argument_groups, runtime_problems
from timm_reid._run import ConfigError, refuse_flags_ignored_by_resume
from timm_reid.options import PatchOptions
from timm_reid.pretrain.methods import all_methods, get_method, method_names

__all__ = ["METHODS", "RUNTIME_OPTIONS", "get_args_parser", "parse_args", "resolve_args", "check_args",
           "explicit_options", "check_resume_options", "method_defaults", "refuse_foreign_options"]

METHODS = method_names()  # at import; method_names() also sees a method added to the path later
# Options that may differ between the interrupted and the resuming command (how to run, not what).
RUNTIME_OPTIONS = ("threads", "workers", "no_progress", "device", "dist_timeout")
PROG = "python -m timm_reid.pretrain"


def method_defaults(method: str) -> dict:
    """The shared options' defaults of ``method`` (its module's ``DEFAULTS``)."""
    return dict(get_method(method).DEFAULTS)


def get_args_parser(add_help: bool = True, method: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``--method method``: the shared groups and that method's groups (``method``
    None: the shared groups only). With ``add_help`` (the parser that prints ``--help``) the other
    methods' groups are shown too, each group once; their flags are not parsed by it."""
    parser = _shared_parser(add_help)
    for module in all_methods():
        if module.NAME == method:
            module.add_arguments(parser)
    if add_help:
        titles = {g.title for g in parser._action_groups}
        for module in all_methods():
            for group in method_argument_groups(module):
                if group.title not in titles:  # ISR and MoCo share the video-crop group
                    parser._action_groups.append(group)
                    titles.add(group.title)
    return parser


def _by_method(value_of) -> str:
    values = {}
    for module in all_methods():
        values.setdefault(value_of(module), []).append(module.NAME)
    return ", ".join(f"{v} {'/'.join(names)}" for v, names in values.items())


def _shared_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, add_help=add_help, allow_abbrev=False,
        description="Pretrain a timm backbone without downloads: supervised on a labeled source "
                    "dataset, or self-supervised (ISR, MoCo) on unlabeled video crops. The result "
                    "is RUN/backbone.safetensors (timm_reid.load_backbone, train --checkpoint-path).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("run")
    g.add_argument("--method", default=None, choices=method_names(), help="required unless --resume")
    g.add_argument("--seed", default=0, type=int, help="seed of training (sampling, augmentation, init)")
    g.add_argument("--output", default=None, metavar="RUN",
                   help="run directory, must be new or empty (None: runs/pretrain-<method>-seed<seed>)")
    g.add_argument("--resume", default=None, metavar="RUN", help="continue the run in RUN from its last.pth")
    g.add_argument("--threads", default=None, type=int,
                   help="torch CPU threads per process (None: all cores, shared by the torchrun processes)")
    g.add_argument("--device", default=default_device(),
                   help="torch device (default: cuda when available; under torchrun, cuda means cuda:LOCAL_RANK)")
    g.add_argument("--dist-timeout", default=1800.0, type=float, metavar="SECONDS",
                   help="torchrun: the longest any process waits for the others before the run ends with an error")
    g.add_argument("--workers", default=0, type=int, help="data-loader worker processes")
    g.add_argument("--no-progress", action="store_true", help="disable progress bars")

    g = parser.add_argument_group("model (any timm model create_model builds, patched or not)")
    g.add_argument("--model", default="convnext_atto", help="timm model name")
    g.add_argument("--height", default=64, type=int, help="input height")
    g.add_argument("--width", default=32, type=int, help="input width")
    add_patch_arguments(g)

    g = parser.add_argument_group("schedule (AdamW, linear warm-up, cosine decay per step)")
    g.add_argument("--epochs", default=None, type=int,
                   help="epochs (None: " + _by_method(lambda m: m.DEFAULTS["epochs"]) + ")")
    g.add_argument("--lr", default=None, type=float,
                   help="peak learning rate (None: " + _by_method(lambda m: m.DEFAULTS["lr"]) + ")")
    g.add_argument("--weight-decay", default=5e-4, type=float)
    g.add_argument("--warmup-epochs", default=1.0, type=float, help="linear warm-up length in epochs")
    g.add_argument("--batch-size", default=None, type=int,
                   help="supervised: P x K batch; isr/moco: images of a super frame (None: "
                        + _by_method(lambda m: m.DEFAULTS["batch_size"]) + ")")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` in two passes: the shared options choose the method (``--method``; with
    ``--resume`` the stored one, read later), then the parser of that method reads ``argv``. A
    flag of another method is a :class:`ConfigError` naming the method(s) it belongs to; any other
    unknown flag is argparse's usage error (exit status 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first, _ = _shared_parser(add_help=False).parse_known_args(argv)
    if "-h" in argv or "--help" in argv:
        get_args_parser(method=first.method).parse_args(argv)  # prints every group and exits
    parser = get_args_parser(add_help=False, method=first.method)
    args, extras = parser.parse_known_args(argv)
    if extras:
        flags = [token.split("=", 1)[0] for token in extras if token.startswith("--")]
        if first.resume is not None:  # the stored method's flags too: refused as ignored by resume
            check_resume_options(first.resume, explicit_options(argv))
        refuse_foreign_options(first.method, [f[2:].replace("-", "_") for f in flags])
        get_args_parser(method=first.method).error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _owners(method):
    """``{dest: [methods]}`` of the options the other methods define and ``method`` does not."""
    own = set(vars(get_args_parser(add_help=False, method=method).parse_args([]))) if method else set()
    owners = {}
    for module in all_methods():
        if module.NAME == method:
            continue
        for group in method_argument_groups(module):
            for action in group._group_actions:
                if action.dest not in own:
                    owners.setdefault(action.dest, []).append(module.NAME)
    return owners


def refuse_foreign_options(method, names) -> None:
    """Options (dests) ``names`` that only other methods define: :class:`ConfigError` naming
    their methods and what ``method`` reads instead."""
    owners = _owners(method)
    foreign = {name: owners[name] for name in names if name in owners}
    if not foreign:
        return
    flags = {f"--{name.replace('_', '-')}": owner for name, owner in foreign.items()}
    named = ", ".join(f"{flag} (method {'/'.join(owner)})" for flag, owner in flags.items())
    if method is None:
        raise ConfigError(f"{named}: --method is required ({', '.join(method_names())}) unless --resume RUN is given")
    raise ConfigError(f"{named} belong(s) to another method than --method {method} and would be ignored; "
                      f"--method {method} reads {get_method(method).DATA}; drop them, or choose the method "
                      f"they belong to (see {PROG} --help)")


def explicit_options(argv) -> set:
    """The options given in ``argv`` itself (not by defaults), whichever method they belong to."""
    given = set()
    for method in (None, *method_names()):
        parser = get_args_parser(add_help=False, method=method)
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        given |= set(vars(parser.parse_known_args(argv)[0]))
    return given


def check_resume_options(resume, given) -> None:
    """With ``--resume`` only the runtime options may be given: the others would be ignored
    (:class:`~timm_reid._run.ConfigError`; ``output`` is where the run already is)."""
    refuse_flags_ignored_by_resume(resume, set(given) - {"output"}, RUNTIME_OPTIONS)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the method-dependent defaults (in place) and return ``args``."""
    for key, value in method_defaults(args.method).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        args.output = f"runs/pretrain-{args.method}-seed{args.seed}"
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`~timm_reid._run.ConfigError` (a ``ValueError``) naming every bad option and the
    fix: the shared options here, the method's own by its ``check``."""
    problems = []
    problems += runtime_problems(args)
    try:
        PatchOptions.from_flags(args, 1)
    except (TypeError, ValueError) as e:
        problems.append(f"model options: {e}")
    problems += [f"--{k.replace('_', '-')} {getattr(args, k)} must be >= 1"
                 for k in ("epochs", "height", "width", "batch_size") if getattr(args, k) < 1]
    finite = {k: getattr(args, k) for k in ("lr", "weight_decay", "warmup_epochs")}
    problems += [f"--{k.replace('_', '-')} {v} must be a finite number"
                 for k, v in finite.items() if not math.isfinite(v)]
    if args.lr <= 0 or args.weight_decay < 0 or args.warmup_epochs < 0:
        problems.append("--lr must be > 0, --weight-decay and --warmup-epochs >= 0")
    problems += get_method(args.method).check(args)
    if problems:
        raise ConfigError("invalid options: " + "; ".join(problems))
