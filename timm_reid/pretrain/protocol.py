"""The pretraining method protocol: what a pretraining method provides and what the harness does.

A pretraining method is one module of :mod:`timm_reid.pretrain` (found by
:mod:`timm_reid.pretrain.methods` through :func:`timm_reid._discovery.discover`, nothing to
register), in the shape of the training protocol (:mod:`timm_reid.train.protocol`) where it
applies. The module provides:

- ``NAME``: the ``--method`` value;
- ``DEFAULTS``: its values of the shared schedule options left ``None`` in the parser
  (``{"epochs": 20, "lr": 1e-3, "batch_size": 80}``): the method owns them, as a training method
  owns its presets;
- ``DATA``: the data it reads, in words with the flag (``"unlabeled video crops (--data DIR)"``),
  for the message that refuses another method's flag;
- ``add_arguments(parser)``: adds its own argument groups. Only the chosen method's groups are in
  the parser that reads a command line, so two methods may define one flag name each their way
  (``--pad``: supervised and MoCo); a flag of another method is refused naming the method(s) that
  own it. ISR and MoCo share the group of unlabeled video crops
  (:func:`timm_reid.pretrain.video_tasks.add_video_arguments`), shown once in ``--help``;
- ``check(args)``: the problems of its options, one sentence each (``[]`` when all is well); the
  harness joins them with the shared options' problems into one :class:`ConfigError`;
- ``build_task(args, run_dir, pair_hook=None)``: a :class:`Task` (data loaded or generated into
  ``run_dir``, backbone built with :func:`timm_reid.pretrain.engine.build_backbone`).

The harness (:mod:`timm_reid.pretrain.run`, :mod:`timm_reid.pretrain.engine`) owns the rest:
option parsing and the method's defaults, the run folder and its lock, ``config.yaml``, seeding
(the initial weights, then every epoch), AdamW with linear warm-up and cosine decay per step,
gradients averaged under torchrun, ``last.pth`` after every epoch (``Task.state_dict`` stored as
its ``"task"`` entry), resume, ``metrics.jsonl``, ``final_metrics.json`` and
``backbone.safetensors``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Tuple, runtime_checkable

from timm_reid._discovery import missing_attributes as _missing

__all__ = ["MethodModule", "Task", "REQUIRED", "missing_attributes"]


@runtime_checkable
class Task(Protocol):
    """One pretraining method's training state, driven epoch by epoch by the harness
    (:class:`timm_reid.pretrain.engine.Task` is the base the methods subclass).

    ``modules`` (an ``nn.ModuleDict``, the backbone under ``"backbone"``) holds everything trained;
    the harness optimises their parameters, checkpoints their state and exports the backbone."""

    modules: Any

    def batches(self, epoch: int) -> Iterable:
        """The batches of ``epoch`` (the harness has seeded every random stream for it)."""

    def num_batches(self) -> int:
        """Batches per epoch (the schedule's steps)."""

    def loss(self, batch) -> Tuple[Any, dict]:
        """The loss to minimise and floats averaged over the epoch into ``metrics.jsonl``."""

    def after_step(self) -> None:
        """After every optimizer step (MoCo: the momentum encoder update)."""

    def end_epoch(self, epoch: int) -> dict:
        """Diagnostics of the epoch (``metrics.jsonl``)."""

    def state_dict(self) -> dict:
        """Its state beside ``modules`` (a memory queue): tensors and plain values only, so
        checkpoints load with ``weights_only=True``."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` wrote."""

    def final_metrics(self, backbone) -> dict:
        """Facts and scores of the trained ``backbone`` for ``final_metrics.json`` (rank 0 only)."""


@runtime_checkable
class MethodModule(Protocol):
    """The attributes of a pretraining method module (see the module docstring)."""

    NAME: str
    DEFAULTS: Mapping[str, Any]
    DATA: str

    def add_arguments(self, parser) -> None: ...

    def check(self, args) -> list: ...

    def build_task(self, args, run_dir: str, pair_hook=None) -> Task: ...


# What a method module must define, with what it is (for the error naming what is missing).
REQUIRED = {"NAME": "the --method name (str)",
            "DEFAULTS": "{shared option: its default for this method} (epochs, lr, batch_size)",
            "DATA": "the data it reads, in words with the flag",
            "add_arguments": "add_arguments(parser): its own argument groups",
            "check": "check(args) -> list of problems", "build_task": "build_task(args, run_dir, pair_hook=None)"}


def missing_attributes(module) -> list:
    """The protocol attributes ``module`` lacks, as ``"NAME (what it is)"`` strings."""
    return _missing(module, REQUIRED)
