"""`PatchOptions`: the one value that says how a backbone is patched (docs/DESIGN.md section 4).

    options = timm_reid.PatchOptions(aibn=(3, 4), tnorm=(1,), num_cameras=6)
    timm_reid.patch(model, options)                         # or patch(model, aibn=[3, 4], ...)
    timm_reid.create_model("resnet50", options, num_classes=0)

The same value is what `patch()` and `create_model()` build from their keywords, what both command
lines build from their flags (`from_flags`), what a patched model records (`model.timm_reid_config`
is `options.to_dict()`), and what backbone files and training checkpoints store with the weights,
so that loading can check that the weights were trained under the options of the model they go
into (`check_weights_fit`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

from .kernels._contract import MIX_MODES, TNORM_MODES

__all__ = ["PatchOptions", "GATES", "ENTRIES", "OptionsMismatch"]

GATES = ("block", "layer", "stage")
ENTRIES = ("replace", "blend")
# A record written before `entry` existed came from the only behaviour then: AIBN replaced the norm.
_ENTRY_BEFORE_THE_OPTION = "replace"
# Options that decide what a weight means (gate_init only seeds a gate the weights then overwrite;
# last_stride changes no weight, and starting a stride-1 ReID model from stride-2 weights is usual).
_AIBN_OPTIONS = ("aibn", "gate", "mix", "downsample", "entry")
_TNORM_OPTIONS = ("tnorm", "num_cameras", "tnorm_mode")

Stages = Union[int, Iterable[int]]


class OptionsMismatch(ValueError):
    """Weights stored with patch options that differ from those of the model they are loaded into."""


@dataclass(frozen=True)
class PatchOptions:
    """How AIBN and TNorm are put into a backbone; validated on construction.

    Attributes:
        aibn: stages (numbered from 1) whose norms become AIBN.
        tnorm: stages after whose output a TNorm is inserted.
        num_cameras: cameras D of the TNorm running statistics (required with `tnorm`).
        gate: AIBN gate sharing: "block" (IICS), "layer" or "stage".
        gate_init: initial gate value w in [0, 1]; w weights the batch statistics (papers' alpha =
            1 - w), 0.1 as the IICS reference.
        mix: AIBN mixing, "var" (IICS) or "std" (Qureshi & Dehghani).
        tnorm_mode: "transform" (IIDS) or "normalize" (Qureshi & Dehghani).
        downsample: also replace the downsample norms of the `aibn` stages.
        last_stride: 1 removes the downsampling of stage 4 (ReID convention, no dilation); None
            (or 2, stored as None) keeps it.
        entry: how AIBN enters: "replace" (the papers: AIBN replaces the norm) or "blend"
            (`BlendedAIBN`: the norm stays and AIBN is blended in by a learned weight from 0).
    """

    aibn: Tuple[int, ...] = ()
    tnorm: Tuple[int, ...] = ()
    num_cameras: Optional[int] = None
    gate: str = "block"
    gate_init: float = 0.1
    mix: str = "var"
    tnorm_mode: str = "transform"
    downsample: bool = True
    last_stride: Optional[int] = None
    entry: str = "blend"

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("aibn", _stage_tuple("aibn", self.aibn))
        set_("tnorm", _stage_tuple("tnorm", self.tnorm))
        _check_choice("gate", self.gate, GATES)
        _check_choice("mix", self.mix, MIX_MODES)
        _check_choice("tnorm_mode", self.tnorm_mode, TNORM_MODES)
        _check_choice("entry", self.entry, ENTRIES)
        _check_choice("last_stride", self.last_stride, (None, 1, 2))
        if self.last_stride == 2:
            set_("last_stride", None)
        if not isinstance(self.downsample, bool):
            raise TypeError(f"downsample must be True or False, got {self.downsample!r}")
        gate_init = self.gate_init
        if (isinstance(gate_init, bool) or not isinstance(gate_init, (int, float)) or not math.isfinite(gate_init)
                or not 0.0 <= gate_init <= 1.0):
            raise ValueError(
                f"gate_init must be a number in [0, 1], got {gate_init!r}: the gate is clamped to [0, 1] "
                "and gets no gradient outside it"
            )
        set_("gate_init", float(gate_init))
        if self.tnorm and self.num_cameras is None:
            raise ValueError(
                f"tnorm={list(self.tnorm)} needs num_cameras (the number of cameras of the dataset, e.g. 6 for "
                "Market-1501, 8 for DukeMTMC-reID, 15 for MSMT17)"
            )
        n = self.num_cameras
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"num_cameras must be a positive int, got {n!r}")

    # ------------------------------------------------------------------ conversions

    @property
    def is_empty(self) -> bool:
        """Nothing to patch: no AIBN, no TNorm, no stride change."""
        return not (self.aibn or self.tnorm or self.last_stride)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly keywords (lists for stages): ``create_model(name, **options.to_dict())``."""
        out = dataclasses.asdict(self)
        out["aibn"], out["tnorm"] = list(self.aibn), list(self.tnorm)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "patch options") -> "PatchOptions":
        """The options of a stored record (a backbone file, a checkpoint, `model.timm_reid_config`).

        Unknown keys are an error naming `source`; keys a record written by an older timm-reid
        lacks take the default of that time (`entry`: "replace", the only behaviour before it existed).
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: patch options must be a mapping of option names, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown patch option(s) {unknown}; valid: {sorted(names)}")
        values = dict(values)
        values.setdefault("entry", _ENTRY_BEFORE_THE_OPTION)
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: invalid patch options: {exc}") from None

    @classmethod
    def from_keywords(cls, options: Optional["PatchOptions"], keywords: Mapping[str, Any]) -> "PatchOptions":
        """`options` itself, or the options the keywords describe (`patch(model, aibn=[3])`); not both."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"unknown patch option(s) {unknown}; valid: {sorted(names)}")
        if options is None:
            return cls(**keywords)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a timm_reid.PatchOptions, got {type(options).__name__}")
        if keywords:
            raise TypeError(f"give the patch options as one PatchOptions or as keywords, not both (got "
                            f"{sorted(keywords)} besides options=); use dataclasses.replace(options, ...) to "
                            "change some")
        return options

    @classmethod
    def from_flags(cls, args: Any, num_cameras: Optional[int]) -> "PatchOptions":
        """The options of a command line's model flags: each option `KEY` from the attribute
        `aibn_KEY`, `tnorm_KEY` or `KEY`, whichever `args` has (`--aibn-entry` -> `entry`), so a new
        option needs only its flag; `num_cameras` (the dataset's) is used only with TNorm stages."""
        values: Dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name == "num_cameras":
                continue
            for attr in (f"aibn_{field.name}", f"tnorm_{field.name}", field.name):
                if hasattr(args, attr):
                    value = getattr(args, attr)
                    values[field.name] = tuple(value) if isinstance(value, list) else value
                    break
        values["num_cameras"] = num_cameras if values.get("tnorm") else None
        return cls(**values)

    # ------------------------------------------------------------------ comparing

    def mismatches(self, stored: "PatchOptions") -> Dict[str, Tuple[Any, Any]]:
        """`{option: (stored, self)}` of the options that change what `stored`'s weights mean here.

        Weights of an unpatched model (no AIBN stages; no TNorm stages) fit any AIBN (TNorm)
        options: they are the usual start. Weights trained with AIBN (TNorm) need the same AIBN
        (TNorm) options. `gate_init` (overwritten by the loaded gates) and `last_stride` (no weight
        changes) never count.
        """
        names = (_AIBN_OPTIONS if stored.aibn else ()) + (_TNORM_OPTIONS if stored.tnorm else ())
        return {name: (getattr(stored, name), getattr(self, name)) for name in names
                if getattr(stored, name) != getattr(self, name)}

    def check_weights_fit(self, stored: "PatchOptions", source: str) -> None:
        """Raise `OptionsMismatch` naming both values when `stored` weights do not fit these options."""
        clash = self.mismatches(stored)
        if clash:
            shown = "; ".join(f"{name}: stored {before!r}, this model {now!r}" for name, (before, now) in clash.items())
            raise OptionsMismatch(
                f"{source} holds weights trained with other patch options than this model's ({shown}). "
                "Loaded anyway they would compute another function. Build the model with the stored options "
                "(timm_reid.load_backbone(path) does; on the command line pass the matching flags, e.g. "
                "--aibn-entry for entry) or start from a file trained with these options."
            )


def _stage_tuple(name: str, stages: Stages) -> Tuple[int, ...]:
    if isinstance(stages, int) and not isinstance(stages, bool):
        stages = [stages]
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Iterable):
        raise TypeError(f"{name} must be a list of stage numbers counted from 1, like [3, 4]; got {stages!r}")
    stages = list(stages)
    for k in stages:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{name} must hold int stage numbers counted from 1, got {k!r} in {stages!r}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"{name}={stages!r} lists a stage more than once; list each stage once")
    return tuple(sorted(stages))


def _check_choice(name: str, value: Any, choices: Tuple[Any, ...]) -> None:
    if value not in choices or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
