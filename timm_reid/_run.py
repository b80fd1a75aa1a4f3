"""The run layer shared by training (:mod:`timm_reid.train`) and pretraining
(:mod:`timm_reid.pretrain`), importing neither: the user-error types, the run folder and its
overwrite rules, atomic writers, the config file, pickle-free checkpoint loading, seeding, the
refusal of flags a resumed run would ignore, progress bars, and the torchrun session.

Run folders: a new run needs a new or empty folder; one holding files is refused naming them,
unless it holds only what a run that stopped before its first checkpoint leaves (its config and
generated data: :attr:`RunFolder.restartable`) or ``--overwrite`` is given (where the command line
has it), which deletes exactly the run's own files (:attr:`RunFolder.run_files`) after every
check. The folder's :class:`~timm_reid._runlock.RunLock` is held from the first write on.

Writers never leave a half-written file: they write ``PATH.tmp`` and ``os.replace`` it. Checkpoints
hold only tensors and plain Python values (dict, list, str, int, float, bool, None), so they load
with ``torch.load(..., weights_only=True)``: a crafted file cannot run code on load.

Seeding: every random stream of a step (augmentation, sampling, head init, ...) is seeded from
:func:`derive_seed` of the run's seed and the step's coordinates when the step starts, so a run
resumed at a step boundary draws exactly the numbers the uninterrupted run drew.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

from timm_reid import distributed
from timm_reid._records import looks_like_torch_file
from timm_reid.data.image_dataset import ImageReadError
from timm_reid._runlock import RunLock, is_bookkeeping, remove_stale_temporaries

__all__ = ["CHECKPOINT_FILE", "USER_ERRORS", "CheckpointError", "ConfigError", "RunFolder", "atomic_save",
           "atomic_write_text", "derive_seed", "load_checkpoint", "progress", "progress_line",
           "refuse_flags_ignored_by_resume", "resumed_options", "seed_everything", "session", "write_config",
           "write_json", "write_jsonl"]

CHECKPOINT_FILE = "last.pth"  # the resumable state of every run, written after every step


class ConfigError(ValueError):
    """An option value, an option combination or a config file that cannot work; the message
    names the option, the value and the fix (command lines print it and exit with status 2)."""


class CheckpointError(ValueError):
    """A file that is not a readable timm-reid checkpoint (truncated, empty, foreign, or holding
    objects that only unpickling could rebuild)."""


# What a command line reports as one paragraph with exit status 2 (a mistake the user can fix),
# rather than a traceback (option and data checks raise ConfigError, never a bare ValueError).
USER_ERRORS = (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, NotADirectoryError,
               ImageReadError, PermissionError)


# ------------------------------------------------------------------------------------------ writers

def atomic_save(obj, path) -> None:
    """``torch.save`` to ``path + '.tmp'``, then ``os.replace`` (never a half-written file)."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(obj, path) -> None:
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def write_jsonl(records, path) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def write_config(options: dict, path) -> None:
    """The resolved options of a run as YAML (``config.yaml``: plain values, sorted by name)."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())}
    atomic_write_text(yaml.safe_dump(plain, sort_keys=False), path)


# ------------------------------------------------------------------------------------------ run folders

@dataclass(frozen=True)
class RunFolder:
    """The overwrite rules of one command line's run folders (see the module docstring)."""

    run_files: Tuple[str, ...]  # the files a run writes (what --overwrite replaces)
    restartable: frozenset = frozenset()  # what a run stopped before its first checkpoint leaves
    has_overwrite: bool = False  # the command line has --overwrite
    writer: str = "timm_reid.train"

    def entries(self, path) -> list:
        """The folder's entries, bookkeeping (lock, generator temporaries) left out."""
        return sorted(n for n in os.listdir(path) if not is_bookkeeping(n)) if os.path.isdir(path) else []

    def check(self, path, *, resuming: bool, overwrite: bool = False, flag: str = "--output") -> list:
        """Refuse a folder a new run may not use (``FileExistsError`` naming what is there and the
        ways out); returns its entries."""
        if os.path.exists(path) and not os.path.isdir(path):
            raise FileExistsError(f"{flag} {path} is a file, not a folder")
        present = self.entries(path)
        if resuming or not present or overwrite or set(present) <= self.restartable:
            return present
        shown = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
        hint = f"continue it with --resume {path}, or " if CHECKPOINT_FILE in present else ""
        replace = ", or pass --overwrite to replace the run files there" if self.has_overwrite else ""
        raise FileExistsError(f"{flag} {path} is not empty: it already holds files ({shown}); {hint}choose a new "
                              f"or empty {flag}{replace}")

    def prepare(self, path, *, resuming: bool, overwrite: bool = False, lock: Optional[RunLock] = None) -> str:
        """Create the run folder, holding ``lock`` from here on; refuse one a new run may not use
        (checked again under the lock), or, resuming, one without a checkpoint. ``overwrite``
        deletes the old run files only now, after every check."""
        if resuming and not os.path.isfile(os.path.join(path, CHECKPOINT_FILE)):
            raise FileNotFoundError(f"--resume {path}: no {CHECKPOINT_FILE} there; is it a run folder of "
                                    f"{self.writer}?")
        self.check(path, resuming=resuming, overwrite=overwrite)  # before the lock adds its file to a folder we refuse
        if lock is not None:
            lock.acquire()
            remove_stale_temporaries(path)
        present = self.check(path, resuming=resuming, overwrite=overwrite)
        if overwrite and not resuming:
            for name in set(self.run_files) & set(present):
                os.remove(os.path.join(path, name))
        os.makedirs(path, exist_ok=True)
        return path


# ------------------------------------------------------------------------------------------ resume

def resumed_options(stored: dict, given, *, defaults: dict, runtime: Sequence[str]):
    """The options of a resumed run: those ``stored`` in its checkpoint over ``defaults`` (options
    added since the checkpoint was written), the ``runtime`` ones (how to run) as ``given`` on this
    command line; ``resume`` and ``output`` are the run folder (``given.resume``)."""
    options = type(given)(**{**defaults, **stored})
    for key in runtime:
        setattr(options, key, getattr(given, key))
    options.resume = options.output = given.resume
    return options


def refuse_flags_ignored_by_resume(resume, given: Iterable[str], allowed: Sequence[str]) -> None:
    """With ``--resume`` a run keeps its stored options: :class:`ConfigError` naming the flags in
    ``given`` (option dests) that it would ignore, i.e. all but ``allowed`` (how to run, not what)."""
    ignored = sorted(set(given) - set(allowed) - {"resume"})
    if resume is None or not ignored:
        return
    flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
    may = ", ".join("--" + k.replace("_", "-") for k in allowed if k != "resume")
    raise ConfigError(f"--resume {resume} continues the run with the options stored in it, so these flags would be "
                      f"ignored: {flags}. Drop them (only {may} may change on resume), or start a new run with "
                      "--output.")


# ------------------------------------------------------------------------------------------ progress

def progress(iterable, *, desc: str, enabled: bool, total: Optional[int] = None):
    """A transient progress bar over ``iterable`` (nothing shown unless ``enabled``: off with
    ``--no-progress`` and on every torchrun process but rank 0)."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False)


def progress_line(text: str) -> None:
    """A line printed above any progress bar (it is not overwritten by the bar)."""
    tqdm.write(text)


# ------------------------------------------------------------------------------------------ torchrun

@contextlib.contextmanager
def session(args):
    """The torchrun process group of a run (one process without torchrun): sets ``args.device`` to
    this process's device and ``args.world_size``; yields the :class:`~timm_reid.distributed.Dist`
    and shuts the group down after."""
    dist = distributed.init(args.device, args.dist_timeout)
    try:
        args.device, args.world_size = distributed.local_device(args.device), dist.world_size
        yield dist
    finally:
        distributed.shutdown(dist)


# ------------------------------------------------------------------------------------------ checkpoints

def load_checkpoint(path, *, required: Sequence[str] = ("args", "model"), writer: str = "timm_reid.train") -> dict:
    """The dict stored in a timm-reid checkpoint (``last.pth``, ``final.pth``, ...).

    Loads with ``weights_only=True``: objects other than tensors and plain values are refused,
    never rebuilt. Raises :class:`CheckpointError` (a ``ValueError``) naming the file when it is
    not a readable timm-reid checkpoint or lacks the ``required`` entries (``writer`` names the
    command line that writes such files), ``FileNotFoundError`` when it does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not looks_like_torch_file(path):  # random bytes also end here
            raise CheckpointError(f"{path} is not a readable timm-reid checkpoint (not a torch file). Re-copy it, "
                                  "or use the run's other checkpoint (final.pth / last.pth).") from None
        # weights_only refuses globals it does not know: a crafted or foreign pickle.
        raise CheckpointError(
            f"{path} is not a readable timm-reid checkpoint: it holds Python objects that only "
            f"unpickling could rebuild, which timm-reid never does ({_first_line(e)}). Use a checkpoint "
            f"written by {writer}, or a backbone file (backbone.safetensors).") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        raise CheckpointError(
            f"{path} is not a readable timm-reid checkpoint (truncated, empty or not a torch file: "
            f"{type(e).__name__}: {_first_line(e)}). Re-copy it, or use the run's other checkpoint "
            "(final.pth / last.pth).") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        entries = " and ".join(f"'{key}'" for key in required)
        raise CheckpointError(f"{path} is not a timm-reid training checkpoint: expected a dict with {entries} "
                              f"entries (a checkpoint written by {writer})")
    return state


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ------------------------------------------------------------------------------------------ seeding

def derive_seed(seed: int, coordinates: Sequence[Tuple[int, int]] = (), salt: int = 0) -> int:
    """The seed of one step: ``(seed * 1_000_003 + sum(index * weight) + salt) mod 2**31`` over the
    step's ``(index, weight)`` coordinates (round, stage, epoch, ...). Each caller keeps its own
    weights and salt, so the seeds of runs written before this function existed are unchanged."""
    return (seed * 1_000_003 + sum(index * weight for index, weight in coordinates) + salt) % (2**31)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
