"""The method protocol: what a training method provides and what the harness does with it.

A method is one module of :mod:`timm_reid.train` (found by :mod:`timm_reid.train.methods`, nothing
to register). The module provides:

- ``NAME``: the ``--method`` value;
- ``PRESETS``: ``{preset name: YAML file}``, the paths relative to the module's folder; every preset
  name is unique across methods, and ``--preset NAME`` alone selects the method that owns it;
- ``DEFAULT_PRESETS``: ``(without --dataset, with --dataset)``, the preset used when none is given
  (synthetic data, a named dataset);
- ``EVALUATION``: the test protocol its data is scored with, a key of
  :data:`timm_reid.evaluation.PROTOCOLS` (``"reid"``: Market-1501 query/gallery; ``"sysumm01"``,
  ``"regdb"``: visible-infrared);
- ``add_arguments(parser)``: adds its own argument group titled ``"method NAME"``. Only the chosen
  method's group is in the parser that reads a command line, so two methods may both define
  ``--epochs``; a flag of another method is refused naming the method that owns it;
- ``check(args)``: refuses inconsistent values of its options (:class:`ConfigError`);
- ``check_data(args, dataset)``: refuses options the loaded dataset cannot satisfy (cluster counts
  above the image count, ...), before any training;
- ``Trainer(ctx, args)``: a :class:`Trainer`, built from the harness's
  :class:`~timm_reid.train.context.Context` (data, transforms, device, shared clustering and
  optimisation options, ``make_net()``) and the parsed options.

The harness (:mod:`timm_reid.train.pipeline`) owns the rest: option parsing, presets and config
files, the run directory, seeding every step with ``Trainer.step_seed``, checkpoints after every
step, resume, evaluation with the method's ``EVALUATION`` protocol (initial, every
``--eval-every`` rounds, final), ``final_metrics.json``, ``backbone.safetensors`` and the plots.
The method owns its clustering, its losses and its optimisers inside ``Trainer.step``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Tuple, runtime_checkable

from timm_reid._discovery import missing_attributes as _missing

__all__ = ["EpochSchedule", "MethodModule", "Trainer", "missing_attributes", "REQUIRED"]

Position = Tuple[int, ...]


@runtime_checkable
class Trainer(Protocol):
    """One method's training state, driven step by step by the harness.

    ``net`` is the network the harness evaluates, checkpoints and exports (a
    :class:`~timm_reid.train.model.ReIDNet`; for ICE the momentum encoder). A *position* is a
    tuple of ints (IICS: ``(round, stage)``, ICE: ``(epoch, 0)``) stored in checkpoints as a list.
    """

    net: Any
    num_rounds: int  # the number of rounds ``step`` reports as finished (curves, --eval-every)

    def start(self) -> Position:
        """The position of the first step of a fresh run."""

    def done(self, position: Position) -> bool:
        """Whether the run is complete at ``position``."""

    def step_seed(self, position: Position) -> int:
        """The seed of every random stream of the step at ``position`` (the harness seeds them
        before the step, so a resumed run draws what the uninterrupted run drew)."""

    def describe(self, position: Position) -> str:
        """The step at ``position`` in words, for the log ("round 3, stage inter")."""

    def step(self, position: Position) -> Tuple[dict, Position, Optional[int]]:
        """Run one step: ``(record fragment, next position, finished round or None)``. Fragments
        gather until a round finishes; the harness then logs them as one ``metrics.jsonl`` line."""

    def state_dict(self) -> dict:
        """Tensors and plain values only (checkpoints load with ``weights_only=True``); must hold
        ``"model"`` (``net``'s state) and ``"head_sizes"`` (``net``'s heads, ``[]`` if none)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` wrote."""

    def summary(self) -> dict:
        """Method facts added to ``final_metrics.json``."""


class EpochSchedule:
    """``start`` / ``done`` / ``describe`` of a method whose step is one epoch: positions
    ``(epoch, 0)``, ``self.num_rounds`` epochs in all (ICE, GUR)."""

    def start(self):
        return (0, 0)

    def done(self, position):
        return position[0] >= self.num_rounds

    def describe(self, position):
        return f"epoch {position[0] + 1}"


@runtime_checkable
class MethodModule(Protocol):
    """The attributes of a method module (see the module docstring)."""

    NAME: str
    PRESETS: Mapping[str, str]
    DEFAULT_PRESETS: Tuple[str, str]
    EVALUATION: str

    def add_arguments(self, parser) -> None: ...

    def check(self, args) -> None: ...

    def check_data(self, args, dataset) -> None: ...

    def Trainer(self, ctx, args) -> Trainer: ...  # noqa: N802 (a class in the module)


# What a method module must define, with what it is (for the error naming what is missing).
REQUIRED = {"NAME": "the --method name (str)", "PRESETS": "{preset name: YAML file next to the module}",
            "DEFAULT_PRESETS": "(preset without --dataset, preset with --dataset)",
            "EVALUATION": "its test protocol, a key of timm_reid.evaluation.PROTOCOLS",
            "add_arguments": "add_arguments(parser): its 'method NAME' argument group",
            "check": "check(args)", "check_data": "check_data(args, dataset)", "Trainer": "Trainer(ctx, args)"}


def missing_attributes(module) -> list:
    """The protocol attributes ``module`` lacks, as ``"NAME (what it is)"`` strings."""
    return _missing(module, REQUIRED)
