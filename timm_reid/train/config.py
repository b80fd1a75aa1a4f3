"""Command-line options of the training harness: argparse parser, YAML presets, resolution, checks.

Precedence, lowest to highest: parser defaults < preset (``--preset NAME``, a YAML file its method
declares in ``PRESETS``) < ``--config FILE`` < command-line flags. Config-file values are checked
with the types and choices of the command line. The resolved options are written to
``RUN_DIR/config.yaml`` and stored (as plain values) in every checkpoint.

The shared groups (config, data, model, sampling and evaluation, clustering, optimisation) are
defined here; each method adds its own group ("method iics", "method ice", ...) from its module
(:mod:`timm_reid.train.protocol`). A command line is read by a parser holding the shared groups
and the chosen method's group only, so methods cannot collide on flag names (two may both have
``--epochs``); the method is chosen first: ``--method``, else a ``--config`` file's ``method:``,
else the owner of ``--preset``, else :data:`~timm_reid.train.methods.DEFAULT_METHOD`. A flag of
another method is refused naming the method it belongs to. ``--help`` shows every method's group.
"""

import argparse
import math
import os
import sys
import warnings

import yaml

from timm_reid._cli import add_patch_arguments, default_device, method_argument_groups, runtime_problems
from timm_reid._run import refuse_flags_ignored_by_resume, write_config
from timm_reid.train.errors import ConfigError
from timm_reid.train.methods import (DEFAULT_METHOD, all_methods, get_method, method_names, preset_names,
                                     preset_owner, preset_path)
from timm_reid.train.starting_points import STARTING_POINTS

# Flags --resume honours (how to run, not what to train); any other flag is refused with it.
RESUME_FLAGS = ("resume", "threads", "workers", "no_progress", "no_plots", "device", "dist_timeout")
PROG = "python -m timm_reid.train"
# Facts a run's config.yaml records that are not options (a config.yaml given as --config skips them).
RECORDED_ONLY = ("world_size",)


def _dataset_names():
    from timm_reid.data import DATASETS

    return tuple(DATASETS)


def get_args_parser(add_help=True, method=None):
    """The parser of ``--method method`` (None: the default method): the shared groups and that
    method's group. With ``add_help`` (the parser that prints ``--help``) the other methods' groups
    are shown too; their flags are not parsed by it."""
    method = method or DEFAULT_METHOD
    parser = _shared_parser(add_help)
    for module in all_methods():
        if module.NAME == method:
            module.add_arguments(parser)
        elif add_help:
            parser._action_groups.extend(method_argument_groups(module))  # shown in --help, never parsed
    return parser


def _shared_parser(add_help):
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False, add_help=add_help,
        description="timm-reid: unsupervised person re-ID training (methods: " + ", ".join(method_names()) + ")",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_config_arguments(parser)
    _add_data_arguments(parser)
    _add_model_arguments(parser)
    _add_training_arguments(parser)
    return parser


def _method_options(module):
    """``{dest: action}`` of a method's own options."""
    return {a.dest: a for g in method_argument_groups(module) for a in g._group_actions}


def _add_config_arguments(parser):
    g = parser.add_argument_group("config")
    g.add_argument("--method", default=DEFAULT_METHOD, choices=method_names(),
                   help="training method (its options below); without --method: the --config file's method:, else "
                        "the method of --preset, else " + DEFAULT_METHOD)
    g.add_argument("--preset", default=None, choices=preset_names(),
                   help="YAML preset giving the defaults, and the method that owns it; None: the method's default, "
                        + ", ".join(f"{m.NAME}: '{m.DEFAULT_PRESETS[0]}' without --dataset, '{m.DEFAULT_PRESETS[1]}' "
                                    "with it" for m in all_methods()))
    g.add_argument("--config", default=None, metavar="FILE", help="YAML file of option values (over the preset)")
    g.add_argument("--output", default=None, metavar="RUN_DIR",
                   help="run directory (None: runs/<preset>-seed<seed>); must be new or empty")
    g.add_argument("--overwrite", action="store_true",
                   help="reuse an --output folder that already holds files (the run files there are replaced)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its stored options "
                        "(only --threads, --workers, --device, --no-progress, --no-plots, --dist-timeout may be "
                        "given with it)")
    g.add_argument("--seed", default=0, type=int, help="seed of everything (data generation included)")
    g.add_argument("--threads", default=None, type=int,
                   help="torch CPU threads per process (None: all cores, shared by the torchrun processes)")
    g.add_argument("--device", default=default_device(),
                   help="torch device (default: cuda when available; under torchrun each process takes "
                        "cuda:LOCAL_RANK)")
    g.add_argument("--dist-timeout", default=1800.0, type=float, metavar="SECONDS",
                   help="torchrun: the longest any process waits for the others (rank 0's clustering "
                        "included) before the run ends with an error")
    g.add_argument("--no-progress", action="store_true", help="disable progress bars")
    g.add_argument("--no-plots", action="store_true", help="do not draw plots at the end")


def _add_data_arguments(parser):
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=None, choices=_dataset_names(),
                   help="dataset layout name; None: generate synthetic data")
    g.add_argument("--root", default=None, metavar="DIR", help="dataset folder (or where synthetic data is written)")
    g.add_argument("--trial", default=None, type=int, metavar="T",
                   help="--dataset regdb: which of its 10 published splits to train and test on (None: 1)")
    g.add_argument("--synthetic-identities", default=150, type=int, help="synthetic data: train identities")
    g.add_argument("--synthetic-test-identities", default=100, type=int, help="synthetic data: test identities")
    g.add_argument("--synthetic-cameras", default=5, type=int, help="synthetic data: number of cameras")
    g.add_argument("--style-strength", default=1.0, type=float,
                   help="synthetic data: camera style strength (1 weak, 4 strong; see timm_reid.data.synthetic)")
    g.add_argument("--height", default=256, type=int, help="input height")
    g.add_argument("--width", default=128, type=int, help="input width")
    g.add_argument("--pad", default=10, type=int, help="training augmentation: zero padding before the random crop")
    g.add_argument("--random-erasing", default=0.5, type=float, help="training augmentation: random erasing probability")
    g.add_argument("--workers", default=0, type=int, help="data-loader worker processes")
    g.add_argument("--test-batch-size", default=128, type=int, help="batch size of feature extraction")


def _add_model_arguments(parser):
    """Patch options are named after their ``timm_reid.patch`` keyword (``KEY``, ``aibn_KEY`` or
    ``tnorm_KEY``): the harness passes every one of them on (``timm_reid.PatchOptions.from_flags``)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="resnet50", help="timm model name")
    g.add_argument("--pretrained", default=False, action=argparse.BooleanOptionalAction,
                   help="load timm's pretrained weights (hub download)")
    g.add_argument("--checkpoint-path", default=None, metavar="FILE",
                   help="initial backbone weights from a file (.pth or .safetensors, e.g. a run's backbone.safetensors)")
    g.add_argument("--init", default=None, choices=tuple(STARTING_POINTS),
                   help="start from a backbone pretrained here without downloads: ISR on synthetic street "
                        "video, or supervised on a synthetic source world; made once into --init-cache "
                        "(minutes), then reused")
    g.add_argument("--init-cache", default=os.path.join("runs", "pretrained"), metavar="DIR",
                   help="--init: where the pretrained starting points are kept")
    add_patch_arguments(g)
    g = parser.add_argument_group("AIBN calibration (before training)")
    g.add_argument("--calibrate-aibn", default=0, type=int, metavar="N",
                   help="before training, set the AIBN running statistics to those of N training images (no "
                        "labels; timm_reid.layers.calibrate_aibn), so that the first evaluation and clustering "
                        "see calibrated AIBN layers; 0: off. With --aibn-entry blend over LayerNorms (ConvNeXt) "
                        "the start does not change (the blend weight starts at 0; the run warns)")
    g.add_argument("--calibrate-aibn-affine", default=False, action=argparse.BooleanOptionalAction,
                   help="with --calibrate-aibn: also refit each AIBN affine to match the unpatched norm's "
                        "output (least squares per channel)")


def _add_training_arguments(parser):
    g = parser.add_argument_group("sampling and evaluation (all methods)")
    g.add_argument("--batch-size", default=64, type=int, help="P x K batches (IICS: inter stage)")
    g.add_argument("--num-instances", default=4, type=int, help="images per pseudo identity in a batch (K)")
    g.add_argument("--eval-every", default=5, type=int,
                   help="evaluate on the test split every N rounds (ICE: epochs); diagnostic only, "
                        "0: only initial and final")
    g.add_argument("--camera-aggregate", default=False, action=argparse.BooleanOptionalAction,
                   help="IIDS: test features summed over TNorm conversions to every camera (needs --tnorm)")
    g = parser.add_argument_group("clustering (all methods)")
    g.add_argument("--k1", default=20, type=int, help="k-reciprocal re-ranking k1")
    g.add_argument("--k2", default=6, type=int, help="k-reciprocal re-ranking k2")
    g.add_argument("--lambda-value", default=0.3, type=float, help="re-ranking weight of the original distance")
    g.add_argument("--center-features", default=False, action=argparse.BooleanOptionalAction,
                   help="subtract each camera's mean feature before clustering (camera-aware centring)")
    g = parser.add_argument_group("optimisation (all methods)")
    g.add_argument("--opt", default="sgd", choices=("sgd", "adam", "adamw"),
                   help="optimizer (adam: L2 weight decay in the gradient, as ICE; adamw: decoupled)")
    g.add_argument("--lr", default=0.005, type=float, help="learning rate (IICS: of the heads)")
    g.add_argument("--backbone-lr-mult", default=0.1, type=float, help="backbone lr = lr * this")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("--weight-decay", default=5e-4, type=float, help="weight decay")


def model_option_names(parser=None):
    """Dests of the "model" group: the only options ``pipeline.patch_options`` maps onto patch options."""
    parser = parser or _shared_parser(add_help=False)
    group = next(g for g in parser._action_groups if g.title == "model")
    return {a.dest for a in group._group_actions}


# ------------------------------------------------------------------------------------------ YAML files

def _read_mapping(path):
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items() if k not in RECORDED_ONLY}


def load_yaml(path, parser):
    """Option values of a YAML file, checked like the command line (names, types, choices).

    A file may also hold options of other methods than the parser's (one file shared by several
    methods; a run's ``config.yaml`` written before each method parsed its own options, which
    records every method's defaults): they are checked with their own method's types and choices,
    then left out, as the method being run never reads them."""
    values = _read_mapping(path)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    foreign = _options_of_other_methods(parser.get_default("method"))
    for key in sorted(set(values) - set(actions) & set(foreign)):
        _checked_value(foreign[key][1], values.pop(key), path)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}; see {PROG} --help for the valid names")
    return {k: _checked_value(actions[k], v, path) for k, v in values.items()}


def _options_of_other_methods(method):
    """``{dest: (method name, action)}`` of the options only other methods than ``method`` have."""
    own = set(_method_options(get_method(method)))
    found = {}
    for module in all_methods():
        if module.NAME != method:
            for dest, action in _method_options(module).items():
                if dest not in own:
                    found.setdefault(dest, (module.NAME, action))
    return found


def _checked_value(action, value, path):
    flag = action.option_strings[-1] if action.option_strings else action.dest
    where = f"{path}: {action.dest}: {value!r}"
    if value is None and action.default is None:
        return None
    if action.nargs == 0:  # store_true / --flag/--no-flag
        if not isinstance(value, bool):
            raise ConfigError(f"{where} is not true/false (as {flag})")
        return value
    if action.nargs in ("*", "+"):
        if not isinstance(value, list) or (action.nargs == "+" and not value):
            raise ConfigError(f"{where} must be a list (as {flag} takes {'one or more' if action.nargs == '+' else 'zero or more'} values)")
        return [_checked_scalar(action, v, where, flag) for v in value]
    return _checked_scalar(action, value, where, flag)


def _yaml_text_note(value, kind):
    """YAML 1.1 reads ``1e-3`` (no dot) as text: say so, and how to write the number."""
    if kind in (int, float) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (f"; YAML read {value} as text (YAML 1.1 numbers need a dot and a signed exponent, e.g. "
                f"1.0e-3, or write 0.001)")
    return ""


def _checked_scalar(action, value, where, flag):
    kind = action.type or str
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(kind, True)
    if kind not in (int, float, str) and isinstance(value, str):  # e.g. a number-or-"auto" option
        try:
            value = kind(value)
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e} (as {flag})") from None
    if not ok:
        raise ConfigError(f"{where} is not {'an' if kind is int else 'a'} {kind.__name__} (as {flag})"
                          + _yaml_text_note(value, kind))
    value = float(value) if kind is float else value
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where} is not one of {', '.join(map(str, action.choices))} (as {flag})")
    return value


# ------------------------------------------------------------------------------------------ parsing

def parse_args(argv=None):
    """Parse ``argv`` with preset and config-file defaults; flags given on the command line win.

    ``--help`` shows the defaults of the chosen preset (``--preset iids --help``). Errors in option
    values, config files or combinations raise :class:`ConfigError`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first = _first_pass(argv)
    _refuse_flags_ignored_by_resume(argv, first)
    method = _chosen_method(first)
    parser = get_args_parser(method=method)
    preset = first.preset or get_method(method).DEFAULT_PRESETS[0 if first.dataset is None else 1]
    parser.set_defaults(**load_yaml(preset_path(preset), parser), preset=preset)
    if first.config is not None:
        values = load_yaml(first.config, parser)
        _refuse_resume_in_config_file(first.config, values)
        parser.set_defaults(**values)
    parser.set_defaults(method=method)
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse_unknown_flags(parser, extras, method)
    return args


def _first_pass(argv):
    """The shared options of ``argv`` (``method`` None unless given): what chooses the parser."""
    parser = _shared_parser(add_help=False)
    parser.set_defaults(method=None)
    first, _ = parser.parse_known_args(argv)
    if first.config is not None and not os.path.isfile(first.config):
        raise ConfigError(f"--config {first.config}: no such file")
    return first


def _chosen_method(first):
    """``--method``, else the ``--config`` file's ``method:``, else ``--preset``'s method, else the
    default; a preset of another method than the chosen one is refused."""
    from_config = _read_mapping(first.config).get("method") if first.config is not None else None
    if from_config is not None and from_config not in method_names():
        raise ConfigError(f"{first.config}: method: {from_config!r} is not one of {', '.join(method_names())}")
    owner = preset_owner(first.preset).NAME if first.preset is not None else None
    method = first.method or from_config or owner or DEFAULT_METHOD
    if owner is not None and owner != method:
        source = "--method" if first.method else f"method: in {first.config}"
        raise ConfigError(f"--preset {first.preset} is a preset of method {owner}, not of method {method} "
                          f"({source}); choose one of {', '.join(get_method(method).PRESETS)}, or train with "
                          f"--method {owner}")
    return method


def _explicit_dests(argv):
    """The options given on the command line ``argv`` itself (not by defaults, presets or files),
    whichever method they belong to."""
    given = set()
    for method in method_names():
        explicit = get_args_parser(add_help=False, method=method)
        for action in explicit._actions:
            action.default = argparse.SUPPRESS
        given |= set(vars(explicit.parse_known_args(argv)[0]))
    return given


def _refuse_resume_in_config_file(path, values):
    if values.get("resume") is not None and set(values) - set(RESUME_FLAGS):
        others = ", ".join(sorted(set(values) - set(RESUME_FLAGS)))
        raise ConfigError(f"{path} holds resume: {values['resume']} and other options ({others}), which resuming "
                          "would ignore (a resumed run keeps its stored options); pass --resume RUN_DIR on the "
                          "command line, or drop resume: to start a new run with these options")


def _refuse_unknown_flags(parser, extras, method):
    """Flags the chosen method's parser does not know: those of another method are named with their
    method (``ConfigError``); anything else is argparse's usage error (exit status 2)."""
    owners = {}
    for dest, (owner, action) in _options_of_other_methods(method).items():
        for flag in action.option_strings:
            owners.setdefault(flag, owner)
    given = [token.split("=", 1)[0] for token in extras if token.startswith("--")]
    foreign = {flag: owners[flag] for flag in given if flag in owners}
    if foreign:
        named = ", ".join(f"{flag} (method {owner})" for flag, owner in foreign.items())
        raise ConfigError(f"{', '.join(foreign)} belong(s) to another method than --method {method} and would be "
                          f"ignored: {named}; drop them, or choose the method they belong to (see {PROG} --help, "
                          "groups 'method ...')")
    parser.error(f"unrecognized arguments: {' '.join(extras)}")


def _refuse_flags_ignored_by_resume(argv, first):
    if first.resume is not None:
        refuse_flags_ignored_by_resume(first.resume, _explicit_dests(argv), RESUME_FLAGS)


def save_config(args, path):
    write_config(vars(args), path)


def _check_patch_flags(args):
    from timm_reid.options import PatchOptions

    try:
        PatchOptions.from_flags(argparse.Namespace(**{k: getattr(args, k) for k in model_option_names()}), 1)
    except (TypeError, ValueError) as e:  # named after the patch keyword; the flag adds aibn_/tnorm_
        raise ConfigError(f"model options: {e} (flags --aibn-KEY / --tnorm-KEY / --KEY set the patch "
                          "option KEY)") from None


def warn_ineffective_options(args):
    """Warn about options that are valid but change nothing here (docs/training.md says so too)."""
    converts = getattr(args, "convert_prob", 0) > 0 or getattr(args, "camera_aggregate", False)
    if args.tnorm and args.tnorm_mode == "transform" and not converts:
        warnings.warn(f"--tnorm {' '.join(map(str, args.tnorm))} in --tnorm-mode transform changes no output "
                      "without conversion (--convert-prob > 0 or --camera-aggregate): it only records per-camera "
                      "statistics. Add a conversion option, use --tnorm-mode normalize, or drop --tnorm.",
                      UserWarning, stacklevel=2)


def check_args(args):
    """Reject inconsistent options before any work starts (errors name the option and the fix)."""
    get_method(args.method)  # unknown method names
    for name in ("batch_size", "num_instances", "height", "width", "test_batch_size", "k1", "k2"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size % args.num_instances:
        raise ConfigError(f"--batch-size {args.batch_size} must be a multiple of --num-instances "
                          f"{args.num_instances} (P identities x K images)")
    for name in ("lr", "backbone_lr_mult"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise ConfigError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if not 0 <= args.momentum < 1:
        raise ConfigError(f"--momentum {args.momentum} must lie in [0, 1) (SGD momentum; 1 and above diverge)")
    if args.pad < 0:
        raise ConfigError(f"--pad must be >= 0 pixels, got {args.pad}")
    problems = runtime_problems(args)
    if problems:
        raise ConfigError("; ".join(problems))
    _check_patch_flags(args)
    if not 0 <= args.lambda_value <= 1:
        raise ConfigError(f"--lambda-value must lie in [0, 1], got {args.lambda_value}")
    if not 0 <= args.random_erasing <= 1:
        raise ConfigError(f"--random-erasing must be a probability in [0, 1], got {args.random_erasing}")
    if args.calibrate_aibn < 0:
        raise ConfigError(f"--calibrate-aibn must be >= 0 images, got {args.calibrate_aibn}")
    if args.calibrate_aibn and not args.aibn:
        raise ConfigError("--calibrate-aibn needs AIBN layers: add --aibn STAGE ...")
    if args.camera_aggregate and not args.tnorm:
        raise ConfigError("--camera-aggregate needs TNorm layers: add --tnorm STAGE ...")
    if args.calibrate_aibn_affine and not args.calibrate_aibn:
        raise ConfigError("--calibrate-aibn-affine refits during calibration: give --calibrate-aibn N too")
    warn_ineffective_options(args)
    if args.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {args.eval_every}")
    given = [flag for flag, on in (("--pretrained", args.pretrained), ("--checkpoint-path", args.checkpoint_path),
                                   ("--init", args.init)) if on]
    if len(given) > 1 and args.resume is None:
        raise ConfigError(f"give one source of initial weights, not {' and '.join(given)}")
    if args.dataset not in (None, "synthetic") and args.root is None:
        raise ConfigError(f"--dataset {args.dataset} needs --root DIR, the folder that holds the dataset")
    get_method(args.method).check(args)
