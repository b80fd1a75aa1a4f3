"""`patch()`: put AIBN and TNorm into a timm or torchvision backbone, in place (docs/DESIGN.md section 4).

    model = timm.create_model("convnext_tiny", pretrained=True, num_classes=0)
    timm_reid.patch(model, aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=6)
    feats = model(images, camids=camids)

What happens to the model:

- `aibn=[k]`: every norm of stage k (block norms and the stage's downsample norm) is replaced by an
  `AIBN` module under the same name, inheriting the affine weights, eps, and the BatchNorm running
  statistics and momentum where they exist (a LayerNorm has none: the AIBN buffers start at 0/1).
  Every key of the unpatched `state_dict` stays valid except BatchNorm's `num_batches_tracked`
  (AIBN does not count batches); the gates add keys `<norm>.gate`.
- Gates: `gate="block"` (IICS) gives the norms of one residual block one shared `nn.Parameter`;
  a ConvNeXt stage's separate downsample layer counts as a block of its own. "layer" gives every
  norm its own gate, "stage" one per stage. The first AIBN of a group creates the gate and the others
  hold the same Parameter, so `state_dict` lists it under every norm of the group (same value;
  loading writes it once per holder, harmlessly).
- `tnorm=[k]`: a `TNorm` is appended to stage k's block container as a child named `tnorm`
  (`layer2.tnorm`, `stages.1.blocks.tnorm`, `features.3.tnorm`), so it runs on the stage output
  (NCHW), inside gradient checkpointing and `features_only` wrappers like any block, and no existing
  key changes.
- Camera ids: a forward pre-hook on the patched model takes the keywords `camids`, `convert` and
  `targets` off the call before timm sees them and hands them to every TNorm of the model through
  one shared `CameraContext`; a forward hook clears it (also when the forward raises).
- `last_stride=1`: see `_families.unstride_stage4`.
- The patch options are recorded as `model.timm_reid_config` (`PatchOptions.to_dict()`, the
  keywords of `create_model`; `patch_options(model)` gives the `PatchOptions`), so
  `timm_reid.create_model(name, **model.timm_reid_config)` rebuilds the model.

Modules are swapped in, never changed in behaviour by rebinding `forward`; AIBN and TNorm are not
`_BatchNorm` subclasses, so timm's BatchNorm converters leave them alone.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ._families import Family, NormSite, Stage, find_family, norm_sites, stage_channels, unstride_stage4
from .layers import AIBN, TNorm
from .layers.blend import BlendedAIBN
from .layers.cameras import CameraContext
from .options import ENTRIES, GATES, PatchOptions

__all__ = ["patch", "patch_options", "describe", "Description", "PatchedLayer", "PatchOptions", "GATES", "ENTRIES"]

CAMERA_KWARGS = ("camids", "convert", "targets")

CONFIG_ATTR = "timm_reid_config"
CONTEXT_ATTR = "timm_reid_cameras"
_CHANGES_ATTR = "_timm_reid_changes"  # module path -> what it was before the patch, for describe()

_AIBN_OPTIONS = ("gate", "gate_init", "mix", "downsample", "entry")  # shared by the stages of two patch() calls
_TNORM_OPTIONS = ("num_cameras", "tnorm_mode")

def patch(model: nn.Module, options: Optional[PatchOptions] = None, **keywords: Any) -> nn.Module:
    """Replace norms by AIBN and insert TNorm in the given stages of `model`, in place.

    Args:
        model: a supported backbone (timm ConvNeXt/ConvNeXt V2/convnext_iso, timm ResNet family,
            torchvision resnet*/convnext_*, or a timm `features_only=True` wrapper of these).
        options: a `timm_reid.PatchOptions`; or, instead, its fields as keywords:
            aibn (stages, numbered from 1, whose norms become AIBN), tnorm (stages after whose
            output a TNorm is inserted), num_cameras (required with tnorm), gate ("block" (IICS),
            "layer", "stage"), gate_init (initial gate w in [0, 1], weight of the batch
            statistics; 0.1), mix ("var" IICS, "std"), tnorm_mode ("transform" IIDS,
            "normalize"), downsample (also the downsample norms), last_stride (1: no stage-4
            downsampling), entry ("replace": AIBN replaces the norm, the papers; "blend":
            `BlendedAIBN` keeps the norm and blends AIBN in from 0, so the patched model first
            computes exactly what the unpatched one did). See `PatchOptions` for each.

    Returns:
        `model` itself, patched.

    When it helps (measured on synthetic data, one seed so far: benchmarks/results/v4/README.md):
    from a pretrained convnext_atto at 128x64, AIBN in stages 3-4 costs accuracy when the cameras do
    not differ (after IICS training: blend -2.7, replace -6.6 mAP against the unpatched model) and
    is level or slightly ahead only under a strong per-camera colour cast (blend +0.9, replace
    -2.4). Patch where cameras differ photometrically, keep the default `entry="blend"`, and compare
    with the unpatched model on your own data.

    Raises:
        TypeError: unsupported model (the message lists the supported families) or norm type.
        ValueError: bad option, stage out of range, `tnorm` without `num_cameras`, a stage patched
            twice, or nothing to do.
    """
    options = PatchOptions.from_keywords(options, keywords)
    if options.is_empty:
        raise ValueError("patch() has nothing to do: pass aibn=[...], tnorm=[...] (with num_cameras) or last_stride=1")
    return apply_config(model, options)


def apply_config(model: nn.Module, config: PatchOptions) -> nn.Module:
    """Apply patch options; all checks run before any change.

    An empty configuration only installs the camera hooks and records the configuration (what
    `create_model` does for an unpatched baseline, so the same call sites work for it).
    """
    family, stages = find_family(model)
    _check_stage_numbers(config, stages, family)
    merged = _merge_config(getattr(model, CONFIG_ATTR, None), config)
    for k in config.aibn:
        norm_sites(family, stages[k - 1])  # raises if already patched or holding unknown norms
    for k in config.tnorm:
        _check_no_tnorm(stages[k - 1])
    changes = model.__dict__.setdefault(_CHANGES_ATTR, {})
    if config.last_stride == 1:
        if len(stages) < 4:
            raise ValueError(f"last_stride=1 needs stage 4, this {family.name} has stages 1-{len(stages)}")
        changes.update((path, "stride 2 -> 1") for path in unstride_stage4(model, family, stages[3]))
        family, stages = find_family(model)  # the stage-4 downsample may have been rebuilt
    context = _camera_context(model)
    for k in config.aibn:
        changes.update(_replace_norms(family, stages[k - 1], config))
    for k in config.tnorm:
        changes.update(_insert_tnorm(stages[k - 1], config, context))
    setattr(model, CONFIG_ATTR, merged.to_dict())
    warn_if_pretrained_layernorms_replaced(model, stacklevel=4)
    return model


# ----------------------------------------------------------------------------- configuration


def _check_stage_numbers(config: PatchOptions, stages: List[Stage], family: Family) -> None:
    for name in ("aibn", "tnorm"):
        bad = [k for k in getattr(config, name) if not 1 <= k <= len(stages)]
        if bad:
            raise ValueError(
                f"{name} stage {bad[0]} is out of range: this {family.name} model has stages 1-{len(stages)} "
                "(stages are numbered from 1, as in the papers)"
            )


def _merge_config(previous: Optional[Dict[str, Any]], config: PatchOptions) -> PatchOptions:
    """Options after this call, so that one `create_model` call can rebuild the model.

    A later `patch()` may add stages; options it shares with an earlier call must then agree.
    """
    if previous is None:
        return config
    before = PatchOptions.from_dict(previous, source=f"the model's {CONFIG_ATTR}")
    merged = dataclasses.asdict(before)
    for stages_key, options in (("aibn", _AIBN_OPTIONS), ("tnorm", _TNORM_OPTIONS)):
        if not getattr(config, stages_key):
            continue
        if getattr(before, stages_key):
            clash = {key: (getattr(before, key), getattr(config, key)) for key in options
                     if getattr(before, key) != getattr(config, key)}
            if clash:
                raise ValueError(
                    f"this model was already patched with {stages_key} options that differ from this call "
                    f"(option: (before, now)) {clash}; use the same options so one create_model call can rebuild it"
                )
        merged.update({key: getattr(config, key) for key in options})
        merged[stages_key] = tuple(sorted(set(getattr(before, stages_key)) | set(getattr(config, stages_key))))
    if config.last_stride == 1:
        merged["last_stride"] = 1
    return PatchOptions(**merged)


def patch_options(model: nn.Module) -> PatchOptions:
    """The options `model` was patched with (`PatchOptions()` for an unpatched model)."""
    recorded = getattr(model, CONFIG_ATTR, None)
    return PatchOptions() if recorded is None else PatchOptions.from_dict(recorded, source=f"model.{CONFIG_ATTR}")


# ----------------------------------------------------------------------------- AIBN


def _replace_norms(family: Family, stage: Stage, config: PatchOptions) -> Dict[str, str]:
    """Swap the norms of one stage for AIBN modules; returns {path: replaced type}."""
    sites = [site for site in norm_sites(family, stage) if config.downsample or not site.downsample]
    if not sites:
        raise ValueError(f"aibn: stage {stage.index} of this {family.name} model has no norm to replace")
    gates: Dict[Any, nn.Parameter] = {}
    replaced = {}
    for site in sites:
        group = {"block": site.block, "layer": site.path, "stage": stage.index}[config.gate]
        new = _aibn_like(site, config, gates.get(group))
        gates.setdefault(group, new.gate)
        setattr(site.parent, site.name, new)
        replaced[site.path] = type(site.module).__name__ + (" (kept, AIBN blended in)" if config.entry == "blend" else "")
    return replaced


def warn_if_pretrained_layernorms_replaced(model: nn.Module, stacklevel: int = 3) -> None:
    """Warn when AIBN replaced trained LayerNorms (``entry="replace"``).

    AIBN normalises over positions per channel, LayerNorm over channels at each position, so the
    replacement changes the function: measured on a pretrained convnext_atto, zero-shot mAP 25.7 -> 5.0.
    """
    changes = model.__dict__.get(_CHANGES_ATTR, {})
    modules = dict(model.named_modules())
    trained = [path for path, was in changes.items()
               if "LayerNorm" in was and "blended" not in was and path in modules and _is_trained(modules[path])]
    if trained:
        warnings.warn(
            f"AIBN replaced {len(trained)} trained LayerNorm(s) (e.g. {trained[0]}; entry='replace'). AIBN "
            "normalises over other axes, so a pretrained ConvNeXt loses most of what it learned before any "
            "training (measured on a pretrained convnext_atto: zero-shot mAP 25.7 -> 5.0, 3 target seeds). entry='blend' keeps the pretrained function exactly "
            "and lets training blend AIBN in.",
            UserWarning, stacklevel=stacklevel,
        )


def _is_trained(norm: nn.Module) -> bool:
    """Affine weights moved away from their init (ones / zeros): the norm was trained."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    return (weight is not None and not bool(torch.all(weight == 1))) or (bias is not None and bool(torch.any(bias != 0)))


def _aibn_like(site: NormSite, config: PatchOptions, gate: Optional[nn.Parameter]) -> AIBN:
    """An AIBN carrying over the replaced norm's affine weights, eps, momentum, running stats, device."""
    old = site.module
    channels = old.num_features if hasattr(old, "num_features") else old.normalized_shape[0]
    momentum = getattr(old, "momentum", None)
    kwargs = dict(
        gate_init=config.gate_init, mix=config.mix, eps=old.eps,
        momentum=momentum if momentum is not None else 0.1, channels_last=site.channels_last, gate=gate,
    )
    if config.entry == "blend":
        base = "batchnorm" if isinstance(old, nn.modules.batchnorm._BatchNorm) else "layernorm"
        new = BlendedAIBN(channels, base=base, **kwargs)
    else:
        new = AIBN(channels, **kwargs)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(old, name, None)
            if value is not None:
                getattr(new, name).copy_(value)
    reference = next(old.parameters(), None)
    if reference is None:
        reference = next(old.buffers(), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    return new.train(old.training)


# ----------------------------------------------------------------------------- TNorm and cameras


def _check_no_tnorm(stage: Stage) -> None:
    for name, child in stage.blocks.named_children():
        if isinstance(child, TNorm):
            raise ValueError(
                f"stage {stage.index} already has a TNorm ({stage.blocks_path}.{name}); each stage can be "
                "patched with tnorm once - build a fresh model to change its configuration"
            )


def _insert_tnorm(stage: Stage, config: PatchOptions, context: CameraContext) -> Dict[str, str]:
    path = f"{stage.blocks_path}.tnorm"
    tnorm = TNorm(stage_channels(stage), config.num_cameras, mode=config.tnorm_mode)
    tnorm.context = context
    tnorm.name = path
    reference = next(stage.blocks.parameters())
    tnorm.to(device=reference.device, dtype=reference.dtype).train(stage.blocks.training)
    stage.blocks.add_module("tnorm", tnorm)
    return {path: "(inserted)"}


def _camera_context(model: nn.Module) -> CameraContext:
    """The model's CameraContext, creating it and the camera hooks on the first patch."""
    context = model.__dict__.get(CONTEXT_ATTR)
    if context is None:
        context = CameraContext()
        setattr(model, CONTEXT_ATTR, context)
        model.register_forward_pre_hook(_take_camera_kwargs, with_kwargs=True)
        model.register_forward_hook(_clear_cameras, always_call=True)
    return context


def _take_camera_kwargs(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: move `camids`/`convert`/`targets` from the call into the camera context.

    A module-level function reading the context from the module (not a closure), so deep copies
    and pickles of the model keep hook, context and TNorms together.
    """
    if not any(key in kwargs for key in CAMERA_KWARGS):
        return None
    camids, convert, targets = (kwargs.pop(key, None) for key in CAMERA_KWARGS)
    if module.training and torch.is_grad_enabled() and _needs_cameras_when_recomputed(module, convert):
        raise ValueError(
            "convert=True or tnorm_mode='normalize' cannot be combined with gradient checkpointing: the "
            "recomputed forward runs during backward, after this call's camera ids are gone, and would "
            "compute something else. Call model.set_grad_checkpointing(False) for these batches."
        )
    getattr(module, CONTEXT_ATTR).set(camids, convert=bool(convert), targets=targets)
    return args, kwargs


def _needs_cameras_when_recomputed(model: nn.Module, convert: Any) -> bool:
    """True if TNorm output depends on camera ids here and timm gradient checkpointing is on."""
    config = getattr(model, CONFIG_ATTR, None) or {}
    normalize = bool(config.get("tnorm")) and config.get("tnorm_mode") == "normalize"
    # timm sets `grad_checkpointing` on the model (ResNet, features_only) or on its stages (ConvNeXt)
    return (bool(convert) or normalize) and any(getattr(m, "grad_checkpointing", False) for m in model.modules())


def _clear_cameras(module: nn.Module, args: tuple, output: Any) -> None:
    getattr(module, CONTEXT_ATTR).clear()


# ----------------------------------------------------------------------------- describe


@dataclass(frozen=True)
class PatchedLayer:
    """One row of `describe()`.

    Attributes:
        stage: stage number (from 1).
        path: module path from the model root (a `state_dict` key prefix).
        kind: "AIBN", "TNorm" or "stride" (a `last_stride=1` change).
        replaces: the replaced type, "(inserted)" for TNorm, "stride 2 -> 1" for stride changes.
        layout: "NCHW" or "NHWC" (channels-last view inside ConvNeXt blocks); "" for strides.
        gate_group: path of the AIBN that owns the gate this one uses (itself if not shared).
    """

    stage: int
    path: str
    kind: str
    replaces: str
    layout: str
    gate_group: Optional[str]


@dataclass(frozen=True)
class Description:
    """What `patch()` did to a model: rows as data (`layers`), `counts`, and a table via `str()`."""

    family: str
    config: Optional[Dict[str, Any]]
    layers: Tuple[PatchedLayer, ...]

    @property
    def counts(self) -> Dict[str, int]:
        """Number of AIBN layers, distinct AIBN gates, TNorm layers and stride changes."""
        kinds = [row.kind for row in self.layers]
        gates = {row.gate_group for row in self.layers if row.kind == "AIBN"}
        return {"AIBN": kinds.count("AIBN"), "gates": len(gates), "TNorm": kinds.count("TNorm"), "stride": kinds.count("stride")}

    def __str__(self) -> str:
        header = ("stage", "path", "kind", "replaces", "layout", "gate group")
        rows = [header] + [
            (str(r.stage), r.path, r.kind, r.replaces, r.layout, r.gate_group or "") for r in self.layers
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [f"{self.family}: {self.counts}", f"config: {self.config}"]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)


def describe(model: nn.Module) -> Description:
    """The AIBN/TNorm layers and stride changes of a patched model, read from the live modules.

    `print(timm_reid.describe(model))` shows a table; `.layers` and `.counts` are for programs.
    An unpatched supported model gives an empty description.
    """
    family, stages = find_family(model)
    prefixes = [(stage.blocks_path, stage.index) for stage in stages]
    prefixes += [(stage.downsample_path, stage.index) for stage in stages if stage.downsample_path]
    changes = model.__dict__.get(_CHANGES_ATTR, {})
    owners: Dict[int, str] = {}
    rows = []
    for path, module in model.named_modules():
        stage = _stage_of(path, prefixes)
        if isinstance(module, AIBN):
            owner = owners.setdefault(id(module.gate), path)
            rows.append(PatchedLayer(stage, path, "AIBN", changes.get(path, "?"), _layout(module), owner))
        elif isinstance(module, TNorm):
            rows.append(PatchedLayer(stage, path, "TNorm", changes.get(path, "(inserted)"), _layout(module), None))
        elif changes.get(path) == "stride 2 -> 1":
            rows.append(PatchedLayer(stage, path, "stride", changes[path], "", None))
    return Description(family.name, getattr(model, CONFIG_ATTR, None), tuple(rows))


def _layout(module: nn.Module) -> str:
    return "NHWC" if module.channels_last else "NCHW"


def _stage_of(path: str, prefixes: List[Tuple[str, int]]) -> int:
    for prefix, index in prefixes:
        if path == prefix or path.startswith(prefix + "."):
            return index
    return 0
