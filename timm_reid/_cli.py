"""Small helpers shared by the command-line entry points (program names, error exits), and the
checks the command lines (train, pretrain) share, run before a run folder gets any file (each
raises ``ValueError`` naming the option, the value and the fix).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Optional, Type, TypeVar

import torch

T = TypeVar("T")


class UsageError(Exception):
    """A configuration problem the user can fix: printed as one paragraph, exit status 2."""


def prog_name(script: str, module: str) -> str:
    """``script`` when run as that console script, else ``python -m module`` (for ``--help``)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if invoked.startswith(script) else f"python -m {module}"


def fail(prog: str, message: str) -> int:
    """Print ``prog: error: message`` on stderr (argparse's format) and return exit status 2."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def checked(check: Callable[[], T], what: str, *, error: Type[ValueError] = ValueError) -> T:
    """``check()``, with the errors a user can fix re-raised as one ``error`` prefixed by ``what``."""
    try:
        return check()
    except error:
        raise
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        raise error(f"{what}: {type(e).__name__}: {e}") from None


def check_output_folder(path: str, *, flag: str) -> None:
    """``path`` is, or can become, a folder this process may write in (nothing is created)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    parent = os.path.abspath(path)
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {parent} (permission denied); choose a folder you can "
                         "write to")


def check_backbone(model_name: str, options, height: int, width: int, *,
                   checkpoint_path: Optional[str] = None) -> None:
    """Build the pooled-feature backbone as a run would (initial weights file included, no
    download) and run it once on two images of ``height x width``: an unknown or unsupported model,
    a stage out of range, a damaged or unfitting checkpoint and an AIBN stage whose feature map is
    1x1 all fail here."""
    from timm_reid.factory import create_model

    backbone = create_model(model_name, options, num_classes=0, checkpoint_path=checkpoint_path)
    with torch.no_grad():
        backbone.eval()(torch.zeros(2, 3, height, width))


def runtime_problems(args) -> list:
    """What is wrong with the how-to-run options both command lines share (``threads``,
    ``workers``, ``device``, ``dist_timeout``): one sentence each, empty when all is well."""
    problems = []
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads {args.threads} must be >= 1 (leave it out to use all cores)")
    if args.workers < 0:
        problems.append(f"--workers {args.workers} must be >= 0 (0: load data in the main process)")
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        problems.append(f"--dist-timeout {args.dist_timeout} must be a finite number of seconds > 0")
    device = device_problem(args.device)
    if device:
        problems.append(device)
    return problems


def device_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a usable torch device here, or None."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        return f"--device {name!r} is not a torch device; use cpu, cuda or cuda:INDEX"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {name} asks for CUDA, but no CUDA device is available here; use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif device.type not in ("cpu",):
        return f"--device {name}: only cpu and cuda devices are supported"
    return None


def default_device() -> str:
    """``cuda`` when a CUDA device is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_patch_arguments(group) -> None:
    """The patch flags of both command lines (train's and pretrain's "model" group), defined once.

    Each flag is named after its :class:`timm_reid.PatchOptions` field (``KEY``, ``aibn_KEY`` or
    ``tnorm_KEY``: ``--aibn-gate-init`` sets ``gate_init``, read back by
    ``PatchOptions.from_flags``) and takes that field's default (stage lists as ``[]``)."""
    import dataclasses

    from timm_reid.options import PatchOptions
    from timm_reid.surgery import ENTRIES

    default = {f.name: f.default for f in dataclasses.fields(PatchOptions)}
    group.add_argument("--aibn", default=[], type=int, nargs="*", help="stages (from 1) whose norms become AIBN")
    group.add_argument("--tnorm", default=[], type=int, nargs="*", help="stages (from 1) followed by a TNorm")
    group.add_argument("--aibn-mix", default=default["mix"], choices=("var", "std"),
                       help="AIBN mixing: variances (IICS) or standard deviations (Qureshi & Dehghani)")
    group.add_argument("--aibn-gate-init", default=default["gate_init"], type=float,
                       help="initial AIBN gate, the weight of the batch statistics (0: instance norm only, "
                            "ISR's IN-after-early-stages choice)")
    group.add_argument("--aibn-entry", default=default["entry"], choices=ENTRIES,
                       help="how AIBN enters the backbone: replace its norms (papers) or blend in beside them "
                            "from 0 (keeps a pretrained backbone's function; see timm_reid.patch)")
    group.add_argument("--tnorm-mode", default=default["tnorm_mode"], choices=("transform", "normalize"),
                       help="TNorm: IIDS style transform or per-camera normalization (Qureshi & Dehghani)")
    group.add_argument("--last-stride", default=default["last_stride"], type=int,
                       help="stride of the last stage (ReID: 1); None keeps it")


def method_argument_groups(module) -> list:
    """The argument groups ``module.add_arguments`` adds, built on a parser of their own (for
    ``--help``, and to know which flags a method owns)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    known = len(parser._action_groups)
    module.add_arguments(parser)
    return parser._action_groups[known:]
