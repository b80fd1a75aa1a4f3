"""Synthetic multi-camera person re-identification data, written in the Market-1501 layout.

Person-like figures are drawn with PIL at twice the output size and box-downsampled:

- **identity**: top colour and pattern (plain, stripes, check, logo), sleeves, bottom colour
  and type (trousers, shorts, skirt), skin, hair colour and style, shoes, body width and
  height, bag type (none, backpack, shoulder bag, handbag) and colour;
- **camera**: a scene (wall and floor colours, horizon, wall texture), person scale and
  position, a preferred viewpoint (front, back, side) and a photometric style (colour cast,
  channel mixing, contrast, brightness, blur, noise);
- **image**: pose (arm swing, stride), position/scale and crop jitter, illumination,
  background clutter and an occluder with probability ``occlusion_p``.

``style_strength`` sets how far cameras differ (``s`` below, ``a = min(s, 1)``):

====================  ================================================================
camera property       value for camera c (``u`` uniform in [-1, 1], ``v`` in [0, 1])
====================  ================================================================
colour gain           ``1 + 0.08 s u`` per channel
colour bias           ``8 s u`` per channel (0..255 scale)
channel mixing        identity ``+ 0.0375 s u`` off the diagonal
contrast, brightness  ``1 + 0.06 s u`` each
blur (Gaussian)       sigma ``0.25 s v`` output pixels
noise (Gaussian)      sigma ``2 + 1.5 s v`` (the 2 is sensor noise shared by all cameras)
scene, scale,         drawn per camera with weight ``a`` and per image with ``1 - a``:
position, viewpoint   ``s = 0`` gives no camera style at all, ``s >= 1`` fully per camera
====================  ================================================================

Each camera-gap factor can be set on its own (``cast_strength``: gain, bias, mixing;
``illumination_strength``: contrast, brightness; ``blur_strength``: blur, noise;
``scene_strength``: scene, scale, position; ``viewpoint_strength``: preferred viewpoint); a factor
left at None follows ``style_strength``, and 0 switches it off. ``scene_strength`` weighs each
camera's scene against one scene shared by all cameras (0: every camera films the same place),
where ``style_strength`` alone weighs it against a new random scene per image. ``resolution_strength`` (default
0, off) makes each camera up to ``1 + 0.5 r`` times coarser (down- and up-sampled). The draws are
the same whatever the strengths, so switching one factor changes nothing else.
``identity_cues`` (``colour``, ``pattern``, ``shape``) says which attributes tell identities
apart: the attributes of a cue left out are those of one reference person for everybody (colour:
every colour; pattern: top pattern, sleeves; shape: width, height, bottom type, hair style, bag).

``s = 1`` is the "weak" style of the feasibility probe (gains 1 +- 0.08, bias +- 8), which a
small ConvNeXt learned from random init; ``s = 4`` is about its "strong" style (gains
1 +- 0.32, bias +- 32, mixing +- 0.15), which it hardly learned. Even at ``s = 1`` naive
features retrieve by camera: on the default dataset the nearest gallery image of a query
comes from the query's own camera for 91 % of queries with an untrained convnext_atto
(87 % with raw pixels), against 21 % at ``s = 0`` (chance: 20 %).

Everything is deterministic by ``seed``: each identity, camera and image draws from its own
``numpy`` generator seeded with ``(seed, stream, ...)``, so the same seed writes bitwise
equal files. ``camera_weights`` makes camera sizes uneven (an identity's cameras are drawn
with these relative weights); ``cameras_per_identity`` with a low bound below the camera count
gives identities that only some cameras see, and ``images_per_camera`` sets the images of an
identity in each of its cameras. Command line::

    python -m timm_reid.data.synthetic --out DIR --seed 0 --num-cameras 5 --num-identities 150
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from timm_reid._permissions import as_umask_allows
from timm_reid.data.layouts import Record, ReIDDataset, load_market1501, split_query_gallery
from timm_reid.data.visible_infrared import load_sysumm01

__all__ = ["SyntheticConfig", "VisibleInfraredConfig", "generate_synthetic", "generate_synthetic_vi",
           "load_synthetic", "save_contact_sheet", "default_cache_dir", "main"]

_SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
CAMERA_FACTORS = ("cast", "illumination", "blur", "scene", "viewpoint")
IDENTITY_CUES = ("colour", "pattern", "shape")
# The identity attributes behind each cue (see _Identity).
_CUE_FIELDS = {
    "colour": ("top", "top_second", "bottom", "skin", "hair", "cap", "shoes", "bag_colour"),
    "pattern": ("top_pattern", "long_sleeves"),
    "shape": ("width", "height", "bottom_type", "hair_style", "bag"),
}
_FORMAT_VERSION = 1
_JPEG_QUALITY = 92


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings; the defaults give ~2,700 images of 64x32 pixels.

    Expected counts with the defaults (5 cameras, 150 train and 100 disjoint test
    identities, each in 2-5 cameras with 2-4 images per camera, 20 distractors), seed 0:
    1,569 train images (150 ids), 344 query images (100 ids), 708 gallery images (100 ids
    plus 20 distractors of pid 0); 2,621 in total. Other seeds differ by a few percent;
    ``meta.json`` records the counts.
    """

    seed: int = 0
    num_cameras: int = 5
    num_identities: int = 150
    num_test_identities: int = 100
    cameras_per_identity: tuple[int, int] = (2, 5)
    images_per_camera: tuple[int, int] = (2, 4)
    num_distractors: int = 20
    image_size: tuple[int, int] = (64, 32)
    style_strength: float = 1.0
    occlusion_p: float = 0.25
    # Fields below were added after format version 1; at their defaults they are left out of
    # ``to_json`` (so of meta.json and the cache key) and change no random draw, so a seed
    # still writes the files it wrote before they existed.
    camera_weights: tuple[float, ...] = ()
    # The camera gap factor by factor (strengths like style_strength; None follows it):
    cast_strength: float | None = None          # colour gain, bias and channel mixing
    illumination_strength: float | None = None  # contrast and brightness
    blur_strength: float | None = None          # blur and camera noise
    scene_strength: float | None = None         # scene, person scale and position
    viewpoint_strength: float | None = None     # preferred viewpoint
    resolution_strength: float = 0.0            # low resolution per camera (off by default)
    # Which attributes tell identities apart; the others are shared by every identity.
    identity_cues: tuple[str, ...] = IDENTITY_CUES

    def factor(self, name: str) -> float:
        """Strength of camera-gap factor ``name`` (``cast``, ``illumination``, ``blur``,
        ``scene``, ``viewpoint``): its own field, else ``style_strength``."""
        value = getattr(self, f"{name}_strength")
        return self.style_strength if value is None else value

    def __post_init__(self):
        # JSON and argparse hand over lists; store tuples so configs compare equal.
        for name in ("cameras_per_identity", "images_per_camera", "image_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "camera_weights", tuple(float(v) for v in self.camera_weights))
        object.__setattr__(self, "identity_cues", tuple(str(v) for v in self.identity_cues))
        problems = self._problems()
        if problems:
            raise ValueError("invalid synthetic dataset config: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        lo, hi = self.cameras_per_identity
        if self.num_cameras < 2:
            problems.append(f"num_cameras={self.num_cameras} must be >= 2")
        if not 1 <= lo <= hi or lo > self.num_cameras:
            problems.append(f"cameras_per_identity={self.cameras_per_identity} must satisfy "
                            f"1 <= lo <= hi and lo <= num_cameras ({self.num_cameras})")
        if not 1 <= self.images_per_camera[0] <= self.images_per_camera[1] <= 99:
            problems.append(f"images_per_camera={self.images_per_camera} must satisfy "
                            "1 <= lo <= hi <= 99")
        if self.num_identities < 1 or self.num_test_identities < 1:
            problems.append("num_identities and num_test_identities must be >= 1")
        if self.num_identities + self.num_test_identities > 9999:
            problems.append("num_identities + num_test_identities must be <= 9999 "
                            "(Market-1501 names hold 4-digit pids)")
        if not 0 <= self.num_distractors <= 99 * self.num_cameras:
            problems.append(f"num_distractors={self.num_distractors} must be in "
                            f"0..{99 * self.num_cameras}")
        if self.image_size[0] < 16 or self.image_size[1] < 8:
            problems.append(f"image_size={self.image_size} must be at least (16, 8) (H, W)")
        if not self.style_strength >= 0:
            problems.append(f"style_strength={self.style_strength} must be >= 0")
        if not 0 <= self.occlusion_p <= 1:
            problems.append(f"occlusion_p={self.occlusion_p} must be in [0, 1]")
        weights = self.camera_weights
        if weights and (len(weights) != self.num_cameras
                        or not all(math.isfinite(w) and w > 0 for w in weights)):
            problems.append(f"camera_weights={weights} must hold one finite weight > 0 per camera "
                            f"({self.num_cameras}), or be empty (all cameras equally likely)")
        for name in CAMERA_FACTORS + ("resolution",):
            value = getattr(self, f"{name}_strength")
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                problems.append(f"{name}_strength={value!r} must be >= 0 (or None: style_strength)")
        cues = self.identity_cues
        if not cues or len(set(cues)) != len(cues) or not set(cues) <= set(IDENTITY_CUES):
            problems.append(f"identity_cues={cues} must be a non-empty subset of {IDENTITY_CUES}")
        else:  # one spelling per set, so configs (and cache keys) that mean the same compare equal
            object.__setattr__(self, "identity_cues", tuple(c for c in IDENTITY_CUES if c in cues))
        return problems

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()
                if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}


# Fields added after format version 1 and their defaults (see SyntheticConfig).
_LATER_FIELDS = {"camera_weights": (), "cast_strength": None, "illumination_strength": None,
                 "blur_strength": None, "scene_strength": None, "viewpoint_strength": None,
                 "resolution_strength": 0.0, "identity_cues": IDENTITY_CUES}


# ---------------------------------------------------------------- random attributes

def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _colour(rng: np.random.Generator, achromatic_p: float = 0.3) -> tuple[int, int, int]:
    """A clothing-like colour: some black/grey/white, the rest saturated or muted hues."""
    if rng.random() < achromatic_p:
        v = rng.choice([0.1, 0.3, 0.55, 0.85, 0.97]) + rng.uniform(-0.05, 0.05)
        return _to_rgb(colorsys.hsv_to_rgb(0.0, 0.0, v))
    return _to_rgb(colorsys.hsv_to_rgb(rng.random(), rng.choice([0.35, 0.6, 0.9]),
                                       rng.uniform(0.3, 0.95)))


def _clip255(value: float) -> int:
    return int(min(max(round(value), 0), 255))


def _to_rgb(rgb01: Sequence[float]) -> tuple[int, int, int]:
    return tuple(_clip255(255 * c) for c in rgb01)


def _jitter(rgb: Sequence[float], rng: np.random.Generator, amount: float) -> tuple:
    return tuple(_clip255(c + d) for c, d in zip(rgb, rng.uniform(-amount, amount, size=3)))


def _lerp(a: Sequence[float], b: Sequence[float], t: float) -> tuple:
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


@dataclass(frozen=True)
class _Identity:
    top: tuple
    top_pattern: str   # plain | stripes | check | logo
    top_second: tuple
    long_sleeves: bool
    bottom: tuple
    bottom_type: str   # trousers | shorts | skirt
    skin: tuple
    hair: tuple
    hair_style: str    # short | long | cap
    cap: tuple
    shoes: tuple
    width: float
    height: float
    bag: str           # none | backpack | shoulder | handbag
    bag_colour: tuple


_SKIN_TONES = [(241, 194, 167), (224, 172, 135), (198, 134, 94), (141, 85, 54), (92, 58, 40)]
_HAIR_COLOURS = [(20, 15, 12), (60, 40, 25), (110, 75, 40), (185, 150, 90), (150, 150, 150)]


def _sample_identity(rng: np.random.Generator) -> _Identity:
    return _Identity(
        top=_colour(rng), top_pattern=str(rng.choice(["plain", "stripes", "check", "logo"])),
        top_second=_colour(rng), long_sleeves=bool(rng.random() < 0.5),
        bottom=_colour(rng, achromatic_p=0.45),
        bottom_type=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.6, 0.25, 0.15])),
        skin=_jitter(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], rng, 12),
        hair=_jitter(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], rng, 10),
        hair_style=str(rng.choice(["short", "long", "cap"], p=[0.5, 0.3, 0.2])),
        cap=_colour(rng), shoes=_colour(rng, achromatic_p=0.7),
        width=float(rng.uniform(0.8, 1.25)), height=float(rng.uniform(0.9, 1.06)),
        bag=str(rng.choice(["none", "backpack", "shoulder", "handbag"], p=[0.4, 0.25, 0.2, 0.15])),
        bag_colour=_colour(rng, achromatic_p=0.4))


_VIEWS = ("front", "back", "side")
_TEXTURES = ("plain", "panels", "bricks", "blotches")


@dataclass(frozen=True)
class _Scene:
    wall: tuple
    floor: tuple
    texture: str
    texture_colour: tuple
    horizon: float       # floor starts at this fraction of the height
    scale: float         # person height / image height
    y_offset: float      # foot position shift, fraction of the height
    view_p: tuple        # probabilities of front, back, side


def _sample_scene(rng: np.random.Generator) -> _Scene:
    wall = _to_rgb(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.6),
                                       rng.uniform(0.25, 0.95)))
    return _Scene(
        wall=wall, floor=_to_rgb(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.4),
                                                     rng.uniform(0.2, 0.8))),
        texture=str(rng.choice(_TEXTURES)), texture_colour=_jitter(wall, rng, 60),
        horizon=float(rng.uniform(0.55, 0.85)), scale=float(rng.uniform(0.8, 0.95)),
        y_offset=float(rng.uniform(-0.04, 0.02)),
        view_p=tuple(float(p) for p in rng.dirichlet([1.0, 1.0, 0.6])))


_NEUTRAL_SCENE_SCALE, _NEUTRAL_Y_OFFSET, _NEUTRAL_VIEW_P = 0.875, -0.01, (0.4, 0.4, 0.2)


@functools.lru_cache(maxsize=64)
def _shared_scene(seed: int) -> _Scene:
    """One scene for every camera of a dataset (the scene factor at 0)."""
    return _sample_scene(_rng(seed, 9))


def _blend_scene(camera: _Scene, own: _Scene, a: float, rng: np.random.Generator,
                 view_a: float | None = None) -> _Scene:
    """Weight ``a`` on the camera's scene, ``1 - a`` on an image-specific one; the viewpoint
    preference with ``view_a`` (default ``a``)."""
    view_a = a if view_a is None else view_a
    return _Scene(
        wall=_lerp(own.wall, camera.wall, a), floor=_lerp(own.floor, camera.floor, a),
        texture=camera.texture if rng.random() < a else own.texture,
        texture_colour=_lerp(own.texture_colour, camera.texture_colour, a),
        horizon=(1 - a) * own.horizon + a * camera.horizon,
        scale=(1 - a) * _NEUTRAL_SCENE_SCALE + a * camera.scale,
        y_offset=(1 - a) * _NEUTRAL_Y_OFFSET + a * camera.y_offset,
        view_p=tuple((1 - view_a) * n + view_a * c for n, c in zip(_NEUTRAL_VIEW_P, camera.view_p)))


@dataclass(frozen=True)
class _Photometric:
    matrix: np.ndarray   # (3, 3) channel mixing times gain
    bias: np.ndarray     # (3,)
    contrast: float
    brightness: float
    blur: float
    noise: float


def _sample_photometric(rng: np.random.Generator, s: float,
                        factors: dict[str, float] | None = None) -> _Photometric:
    """A camera's style; ``factors`` overrides ``s`` for ``cast``, ``illumination`` and
    ``blur`` (the draws are the same whatever the strengths, so one factor can be switched off
    without changing the others)."""
    cast, light, blur = ((factors or {}).get(name, s) for name in ("cast", "illumination", "blur"))
    mix = np.eye(3) + 0.0375 * cast * rng.uniform(-1, 1, size=(3, 3)) * (1 - np.eye(3))
    gain = 1 + 0.08 * cast * rng.uniform(-1, 1, size=3)
    bias = 8 * cast * rng.uniform(-1, 1, size=3)
    contrast, brightness = 1 + 0.06 * light * rng.uniform(-1, 1, size=2)
    return _Photometric(matrix=gain[:, None] * mix, bias=bias, contrast=float(contrast),
                        brightness=float(brightness), blur=float(0.25 * blur * rng.random()),
                        noise=float(2 + 1.5 * blur * rng.random()))


@dataclass(frozen=True)
class _Camera:
    scene: _Scene
    photometric: _Photometric
    resolution: float = 1.0   # the camera's images are this many times coarser (1: full)


def _sample_camera(seed: int, cam: int, s: float, config: SyntheticConfig | None = None) -> _Camera:
    """Camera ``cam``'s scene and style at strength ``s``; ``config`` gives per-factor strengths."""
    rng = _rng(seed, 1, cam)
    factors = {name: config.factor(name) for name in ("cast", "illumination", "blur")} if config else None
    camera = _Camera(scene=_sample_scene(rng), photometric=_sample_photometric(rng, s, factors))
    if config is not None and config.resolution_strength > 0:  # its own stream: no other draw moves
        coarser = 1 + 0.5 * config.resolution_strength * _rng(seed, 7, cam).random()
        camera = dataclasses.replace(camera, resolution=float(coarser))
    return camera


# ---------------------------------------------------------------- drawing

@dataclass(frozen=True)
class _Body:
    """Where one person stands on the canvas and how wide their parts are (pixels)."""

    ident: _Identity
    view: str
    cx: float      # body centre line
    foot: float    # y of the soles
    hp: float      # person height
    sw: float      # shoulder half-width
    hw: float      # hip half-width
    limb_w: float  # leg thickness

    def y(self, f: float) -> float:
        """y of the point a fraction ``f`` of the height below the top of the head."""
        return self.foot - self.hp * (1 - f)

    def torso_x(self, t: float, side: int) -> float:
        """x of the torso's left (side=-1) or right (+1) edge, ``t`` in [0, 1] downwards."""
        return self.cx + side * (self.sw - (self.sw - self.hw) * t)


class _Painter:
    """Draws one person image on a 2x canvas; coordinates are canvas pixels."""

    def __init__(self, size_hw: tuple[int, int], rng: np.random.Generator):
        self.h, self.w = 2 * size_hw[0], 2 * size_hw[1]
        self.rng = rng
        self.image = Image.new("RGB", (self.w, self.h))
        self.draw = ImageDraw.Draw(self.image)

    def limb(self, p0, p1, width, colour):
        self.draw.line([p0, p1], fill=colour, width=max(1, int(round(width))))
        r = width / 2
        for x, y in (p0, p1):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)

    def background(self, scene: _Scene):
        rng, w, h = self.rng, self.w, self.h
        wall, floor = _jitter(scene.wall, rng, 10), _jitter(scene.floor, rng, 10)
        horizon = h * (scene.horizon + rng.uniform(-0.03, 0.03))
        self.draw.rectangle([0, 0, w, h], fill=wall)
        tex = scene.texture_colour
        if scene.texture == "panels":
            step = w / rng.integers(2, 5)
            for i in range(1, 6):
                x = (i * step + rng.uniform(-2, 2)) % w
                self.draw.line([(x, 0), (x, horizon)], fill=tex, width=2)
        elif scene.texture == "bricks":
            for j, y in enumerate(np.arange(rng.uniform(0, 10), horizon, 10)):
                self.draw.line([(0, y), (w, y)], fill=tex, width=1)
                for x in np.arange(10 * (j % 2), w, 20):
                    self.draw.line([(x, y), (x, y + 10)], fill=tex, width=1)
        elif scene.texture == "blotches":
            for _ in range(4):
                x, y, r = rng.uniform(0, w), rng.uniform(0, horizon), rng.uniform(4, 12)
                self.draw.ellipse([x - r, y - r / 2, x + r, y + r / 2], fill=tex)
        self.draw.rectangle([0, horizon, w, h], fill=floor)
        if rng.random() < 0.3:  # a pole or door frame somewhere in the scene
            x = rng.uniform(0, w)
            self.draw.rectangle([x, 0, x + rng.uniform(2, 6), horizon + 4],
                                fill=_jitter(tex, rng, 40))

    def person(self, ident: _Identity, scene: _Scene, view: str):
        rng = self.rng
        hp = self.h * scene.scale * ident.height * rng.uniform(0.94, 1.04)
        foot = self.h * (0.98 + scene.y_offset) + rng.uniform(-0.02, 0.02) * self.h
        cx = self.w / 2 + rng.uniform(-0.07, 0.07) * self.w
        self.person_at(ident, view, cx=cx, foot=foot, hp=hp, pose=rng.uniform(-1, 1, size=3))

    def person_at(self, ident: _Identity, view: str, *, cx: float, foot: float, hp: float,
                  pose: Sequence[float]):
        """Draw ``ident`` with its centre line at ``cx``, soles at ``foot``, height ``hp``
        (canvas pixels) and ``pose = (arm swing, other arm, stride)``, each in [-1, 1]
        (``timm_reid.data.video`` animates them frame by frame)."""
        k = ident.width * (0.62 if view == "side" else 1.0)
        body = _Body(ident, view, cx, foot, hp, sw=0.13 * k * hp, hw=0.11 * k * hp,
                     limb_w=0.075 * ident.width * hp)
        arm_swing, other_arm, stride = pose
        if ident.bag == "backpack" and view == "side":
            self.draw.rectangle([cx - body.sw - 0.1 * hp, body.y(0.21), cx - body.sw + 0.02 * hp,
                                 body.y(0.45)], fill=ident.bag_colour)
        if ident.hair_style == "long" and view != "front":
            self.draw.rectangle([cx - 0.06 * hp, body.y(0.07), cx + 0.06 * hp, body.y(0.27)],
                                fill=ident.hair)
        self._legs(body, stride)
        self._torso(body)
        self._arms(body, (arm_swing, other_arm))
        self._head(body)
        self._bag(body)

    def _legs(self, b: "_Body", stride: float):
        ident, cx, y = b.ident, b.cx, b.y
        if b.view == "side":
            feet, hips = [cx + 0.12 * stride * b.hp, cx - 0.12 * stride * b.hp], [cx, cx]
        else:
            spread = 0.5 * b.hw + 0.03 * stride * b.hp
            feet, hips = [cx - spread, cx + spread], [cx - 0.5 * b.hw, cx + 0.5 * b.hw]
        trousers = ident.bottom_type == "trousers"
        for hx, fx in zip(hips, feet):
            knee = ((hx + fx) / 2, y(0.76))
            self.limb(knee, (fx, y(0.97)), b.limb_w if trousers else 0.75 * b.limb_w,
                      ident.bottom if trousers else ident.skin)
            self.limb((hx, y(0.54)), knee, b.limb_w,
                      ident.skin if ident.bottom_type == "skirt" else ident.bottom)
            self.draw.ellipse([fx - 0.7 * b.limb_w, y(0.95), fx + 0.7 * b.limb_w, y(1.0)],
                              fill=ident.shoes)
        self.draw.rectangle([cx - b.hw, y(0.5), cx + b.hw, y(0.58)], fill=ident.bottom)
        if ident.bottom_type == "skirt":
            self.draw.polygon([(cx - b.hw, y(0.5)), (cx + b.hw, y(0.5)), (cx + 1.5 * b.hw, y(0.74)),
                               (cx - 1.5 * b.hw, y(0.74))], fill=ident.bottom)

    def _torso(self, b: "_Body"):
        ident = b.ident
        top, bottom = b.y(0.18), b.y(0.54)
        self.draw.polygon([(b.torso_x(0, -1), top), (b.torso_x(0, 1), top),
                           (b.torso_x(1, 1), bottom), (b.torso_x(1, -1), bottom)], fill=ident.top)
        second, pattern = ident.top_second, ident.top_pattern
        if pattern in ("stripes", "check"):
            for t0 in np.arange(0.1, 1.0, 0.2):
                t1 = t0 + 0.1
                ya, yb = top + t0 * (bottom - top), top + t1 * (bottom - top)
                self.draw.polygon([(b.torso_x(t0, -1), ya), (b.torso_x(t0, 1), ya),
                                   (b.torso_x(t1, 1), yb), (b.torso_x(t1, -1), yb)], fill=second)
        if pattern == "check":
            for f in (0.25, 0.5, 0.75):
                xa = b.torso_x(0, -1) + f * (b.torso_x(0, 1) - b.torso_x(0, -1))
                xb = b.torso_x(1, -1) + f * (b.torso_x(1, 1) - b.torso_x(1, -1))
                self.draw.line([(xa, top), (xb, bottom)], fill=second, width=2)
        if pattern == "logo" and b.view != "back":
            r = 0.35 * b.hw
            self.draw.rectangle([b.cx - r, b.y(0.27), b.cx + r, b.y(0.27) + 1.4 * r], fill=second)

    def _arms(self, b: "_Body", swing: tuple[float, float]):
        ident, arm_w, length = b.ident, 0.8 * b.limb_w, b.y(0.52) - b.y(0.2)
        if b.view == "side":
            shoulders, angles = [b.cx], [0.5 * swing[0]]
        else:
            shoulders = [b.cx - b.sw + arm_w / 2, b.cx + b.sw - arm_w / 2]
            angles = [-(0.12 + 0.2 * abs(swing[0])), 0.12 + 0.2 * abs(swing[1])]
        for sx, angle in zip(shoulders, angles):
            dx, dy = math.sin(angle) * length, math.cos(angle) * length
            shoulder = (sx, b.y(0.2))
            elbow, hand = (sx + dx / 2, shoulder[1] + dy / 2), (sx + dx, shoulder[1] + dy)
            self.limb(shoulder, elbow, arm_w, ident.top)
            self.limb(elbow, hand, arm_w, ident.top if ident.long_sleeves else ident.skin)
            r = 0.55 * arm_w
            self.draw.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r],
                              fill=ident.skin)

    def _head(self, b: "_Body"):
        ident, cx, hp = b.ident, b.cx, b.hp
        rx, ry, cy = 0.055 * hp, 0.075 * hp, b.y(0.09)
        head = [cx - rx, cy - ry, cx + rx, cy + ry]
        self.draw.rectangle([cx - 0.025 * hp, cy, cx + 0.025 * hp, b.y(0.19)], fill=ident.skin)
        self.draw.ellipse(head, fill=ident.hair if b.view == "back" else ident.skin)
        if b.view == "side":
            self.draw.pieslice(head, 90, 300, fill=ident.hair)
        elif b.view == "front":
            self.draw.chord(head, 180, 360, fill=ident.hair)
        if ident.hair_style == "cap":
            self.draw.chord([cx - rx, cy - 1.1 * ry, cx + rx, cy + 0.5 * ry], 180, 360,
                            fill=ident.cap)
            if b.view != "back":  # the peak
                self.draw.rectangle([cx - rx, cy - 0.4 * ry, cx + 1.5 * rx, cy - 0.15 * ry],
                                    fill=ident.cap)

    def _bag(self, b: "_Body"):
        ident, cx, sw, hp, y = b.ident, b.cx, b.sw, b.hp, b.y
        colour = ident.bag_colour
        if ident.bag == "backpack" and b.view == "back":
            self.draw.rectangle([cx - 0.7 * sw, y(0.21), cx + 0.7 * sw, y(0.46)], fill=colour)
        elif ident.bag == "backpack" and b.view == "front":  # straps
            for x in (cx - 0.6 * sw, cx + 0.6 * sw):
                self.draw.line([(x, y(0.18)), (x, y(0.38))], fill=colour, width=3)
        elif ident.bag == "shoulder":
            side = 1 if b.view != "back" else -1
            self.draw.line([(cx - side * sw, y(0.18)), (cx + side * sw, y(0.48))], fill=colour,
                           width=2)
            self.draw.rectangle([cx + side * sw - 0.06 * hp, y(0.46), cx + side * sw + 0.06 * hp,
                                 y(0.58)], fill=colour)
        elif ident.bag == "handbag":
            x = cx + sw + 0.05 * hp
            self.draw.rectangle([x - 0.04 * hp, y(0.5), x + 0.05 * hp, y(0.6)], fill=colour)

    def occluder(self):
        rng, w, h = self.rng, self.w, self.h
        colour = _colour(rng)
        kind = rng.integers(3)
        if kind == 0:  # bench, car bonnet, railing at the bottom
            self.draw.rectangle([0, h * (1 - rng.uniform(0.18, 0.35)), w, h], fill=colour)
        elif kind == 1:  # another person or a pillar at one side
            width = w * rng.uniform(0.2, 0.35)
            x0 = 0 if rng.random() < 0.5 else w - width
            self.draw.rectangle([x0, h * rng.uniform(0, 0.3), x0 + width, h], fill=colour)
        else:  # an object in front of the legs
            x, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.3) * w
            self.draw.ellipse([x - r, h * 0.7, x + r, h * 0.7 + 2 * r], fill=colour)


def _render(ident: _Identity, camera: _Camera, config: SyntheticConfig,
            rng: np.random.Generator) -> Image.Image:
    """One image of ``ident`` seen by ``camera``, at the output size."""
    a, view_a = (min(config.factor(name), 1.0) for name in ("scene", "viewpoint"))
    own = _sample_scene(rng)  # drawn in every case, so that no later draw moves
    if config.scene_strength is not None:
        # The scene factor on its own weighs the camera's scene against one scene shared by every
        # camera (0: no scene gap). style_strength alone weighs it against a new scene per image,
        # as it always did: at style 0 the background varies more than the person.
        own = _shared_scene(config.seed)
    scene = _blend_scene(camera.scene, own, a, rng, view_a)
    painter = _Painter(config.image_size, rng)
    painter.background(scene)
    painter.person(ident, scene, _VIEWS[rng.choice(3, p=np.asarray(scene.view_p) /
                                                   sum(scene.view_p))])
    if rng.random() < config.occlusion_p:
        painter.occluder()
    h, w = config.image_size
    zx, zy = rng.uniform(0.0, 0.06, size=2)  # crop jitter: zoom in by up to 12 %, shift
    x0, y0 = rng.uniform(0, 2 * zx) * painter.w, rng.uniform(0, 2 * zy) * painter.h
    box = (x0, y0, x0 + (1 - 2 * zx) * painter.w, y0 + (1 - 2 * zy) * painter.h)
    image = painter.image.resize((w, h), Image.Resampling.BOX, box=box)
    if camera.resolution > 1:  # a coarser sensor, seen at the common output size
        coarse = (max(1, round(w / camera.resolution)), max(1, round(h / camera.resolution)))
        image = image.resize(coarse, Image.Resampling.BOX).resize((w, h), Image.Resampling.BILINEAR)
    return _apply_photometric(image, camera.photometric, rng)


def _apply_photometric(image: Image.Image, style: _Photometric,
                       rng: np.random.Generator) -> Image.Image:
    if style.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    x = np.asarray(image, dtype=np.float32)
    width = x.shape[1]
    light = rng.uniform(0.88, 1.12) * (1 + rng.uniform(-0.08, 0.08) *  # illumination
                                       np.linspace(-1, 1, width, dtype=np.float32))
    x = x * light[None, :, None]
    x = x @ style.matrix.T.astype(np.float32) + style.bias.astype(np.float32)
    mean = x.mean()
    x = ((x - mean) * style.contrast + mean) * style.brightness
    x = x + rng.normal(0, style.noise, size=x.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- dataset plan

def _plan_identity(config: SyntheticConfig, pid: int) -> list[tuple[int, int]]:
    """(camera, image index) pairs of one identity."""
    rng = _rng(config.seed, 5, pid)
    lo, hi = config.cameras_per_identity
    n_cams = int(rng.integers(lo, min(hi, config.num_cameras) + 1))
    # Uneven camera sizes: busy cameras are drawn more often (weights given: another sampler,
    # so the default keeps its draws).
    p = np.asarray(config.camera_weights) / sum(config.camera_weights) if config.camera_weights else None
    cams = sorted(int(c) for c in rng.choice(config.num_cameras, size=n_cams, replace=False, p=p))
    return [(cam, k) for cam in cams
            for k in range(int(rng.integers(config.images_per_camera[0],
                                            config.images_per_camera[1] + 1)))]


def _market_name(pid: int, cam: int, k: int, config: SyntheticConfig) -> str:
    frame = int(_rng(config.seed, 6, pid, cam, k).integers(0, 1_000_000))
    return f"{pid:04d}_c{cam + 1}s1_{frame:06d}_{k + 1:02d}.jpg"


def _plan(config: SyntheticConfig) -> list[tuple[str, int, int, int]]:
    """Every image as (split folder, pid, camera, image index); distractors have pid 0."""
    num_train, num_test = config.num_identities, config.num_test_identities
    train = [(pid, cam, k) for pid in range(1, num_train + 1)
             for cam, k in _plan_identity(config, pid)]
    test = [(pid, cam, k) for pid in range(num_train + 1, num_train + num_test + 1)
            for cam, k in _plan_identity(config, pid)]
    query, _ = split_query_gallery([Record(str(i), pid, cam) for i, (pid, cam, _) in
                                    enumerate(test)], seed=config.seed)
    is_query = {int(r.path) for r in query}
    distractors = [(0, j % config.num_cameras, j // config.num_cameras)
                   for j in range(config.num_distractors)]
    return ([("bounding_box_train", *item) for item in train]
            + [("query" if i in is_query else "bounding_box_test", *item)
               for i, item in enumerate(test)]
            + [("bounding_box_test", *item) for item in distractors])


def _identity(seed: int, pid: int, cam: int, k: int) -> _Identity:
    if pid == 0:  # every distractor is a different random person
        return _sample_identity(_rng(seed, 3, cam, k))
    return _identity_of(seed, pid)


@functools.lru_cache(maxsize=4096)
def _identity_of(seed: int, pid: int) -> _Identity:
    return _sample_identity(_rng(seed, 0, pid))


def _with_cues(ident: _Identity, seed: int, cues: Sequence[str]) -> _Identity:
    """``ident`` with the attributes of every cue not in ``cues`` taken from one reference
    person shared by all identities of the dataset (so those attributes tell nobody apart)."""
    shared = [field for cue, fields in _CUE_FIELDS.items() if cue not in cues for field in fields]
    if not shared:
        return ident
    reference = _sample_identity(_rng(seed, 8))
    return dataclasses.replace(ident, **{field: getattr(reference, field) for field in shared})


def generate_synthetic(out: str | os.PathLike, config: SyntheticConfig | None = None,
                       **options) -> dict:
    """Write a synthetic dataset in the Market-1501 layout to ``out``; return its meta.

    ``out`` must not exist yet or be an empty folder: nothing is ever written among other files.
    ``options`` are :class:`SyntheticConfig` fields, used when ``config`` is None. The
    folder gets ``bounding_box_train``, ``query``, ``bounding_box_test`` with real Market
    names (train pids ``1..P``, test pids ``P+1..P+Q``, distractors pid 0) and
    ``meta.json`` (config and counts; deterministic), written last. The returned meta
    also holds ``seconds``, the generation time.
    """
    config = config if config is not None else _config_from(options)
    return _write_dataset(out, ".synthetic-", lambda folder: {
        "generator": "timm_reid.data.synthetic", "format_version": _FORMAT_VERSION,
        "config": config.to_json(), "counts": _write_images(folder, config)})


def _write_dataset(out: str | os.PathLike, prefix: str, write) -> dict:
    """Run ``write(folder) -> meta`` on a temporary folder next to ``out``, add ``meta.json``
    and move it into ``out``; return the meta with ``seconds``. Writing beside ``out`` first
    means a crash never leaves a half dataset behind and concurrent writers of one cache folder
    cannot mix their files."""
    out = os.fspath(out)
    _check_output_folder(out)
    start = time.perf_counter()
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = as_umask_allows(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mkdtemp: 0700
    try:
        meta = write(tmp)
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**meta, "seconds": round(time.perf_counter() - start, 2)}


def _check_output_folder(out: str) -> None:
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a folder; choose a new or empty output folder")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    taken = [n for n in ("meta.json",) + _SPLIT_FOLDERS if n in entries]
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    what = f"already holds a dataset ({', '.join(taken)})" if taken else f"is not empty ({shown})"
    raise FileExistsError(f"{out} {what}; synthetic data is only written into a new or empty folder: "
                          "choose another output folder")


def _write_images(folder: str, config: SyntheticConfig) -> dict:
    for name in _SPLIT_FOLDERS:
        os.makedirs(os.path.join(folder, name))
    cameras = [_sample_camera(config.seed, c, config.style_strength, config)
               for c in range(config.num_cameras)]
    counts = dict.fromkeys(_SPLIT_FOLDERS, 0)
    for split, pid, cam, k in _plan(config):
        ident = _with_cues(_identity(config.seed, pid, cam, k), config.seed, config.identity_cues)
        image = _render(ident, cameras[cam], config, _rng(config.seed, 2, pid, cam, k))
        path = os.path.join(folder, split, _market_name(pid, cam, k, config))
        image.save(path, format="JPEG", quality=_JPEG_QUALITY)
        counts[split] += 1
    return counts


def _move_into(tmp: str, out: str) -> None:
    """Rename ``tmp`` to ``out`` (atomic when ``out`` is missing or empty), else move its
    entries into ``out`` with ``meta.json`` last."""
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if not os.path.isdir(out) or os.path.exists(os.path.join(out, "meta.json")):
            raise FileExistsError(f"cannot write the dataset to {out}: it is not a folder or "
                                  "another process wrote a dataset there meanwhile") from None
    for name in sorted(set(os.listdir(tmp)) - {"meta.json"}) + ["meta.json"]:
        os.rename(os.path.join(tmp, name), os.path.join(out, name))


def _config_from(options: dict) -> SyntheticConfig:
    valid = [f.name for f in dataclasses.fields(SyntheticConfig)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown synthetic dataset option(s) {unknown}; valid: "
                         f"{', '.join(valid)}")
    return SyntheticConfig(**options)


# ---------------------------------------------------------------- visible-infrared data

@dataclass(frozen=True)
class VisibleInfraredConfig:
    """Settings of a synthetic visible-infrared dataset in the SYSU-MM01 layout.

    The people are the Market-layout generator's (same identity model and seed streams), seen
    by ``num_visible_cameras`` colour cameras and ``num_infrared_cameras`` near-infrared ones.
    An infrared camera renders intensity only, from a per-material reflectance drawn for each
    identity independently of the visible colours (so colour cues vanish while pattern, shape,
    bag, hair style and the reflectance contrast between garments stay), with its own gain,
    contrast, blur and noise (``infrared_strength`` scales how far infrared cameras differ), and
    writes 3 equal channels as SYSU-MM01 stores them. ``infrared_from_visible`` (0 by default)
    makes that share of each garment's reflectance follow its visible luminance instead: a
    cross-modality cue of known strength, for telling a method that cannot bridge the modalities
    from data that gives it nothing to bridge with. Every identity is seen by both modalities,
    each by a random subset of the cameras of each modality (so cameras see part of the
    identities, as in SYSU-MM01).

    Expected counts with the defaults (4 visible + 2 infrared cameras, 150 train and 100 test
    identities, 1-4 visible and 1-2 infrared cameras each, 2-4 images per camera), seed 0:
    1,751 train images (642 infrared), 453 infrared query images and 769 visible gallery
    images (the pool); other seeds differ by a few percent; ``meta.json`` records the counts.
    """

    seed: int = 0
    num_visible_cameras: int = 4
    num_infrared_cameras: int = 2
    num_identities: int = 150
    num_test_identities: int = 100
    visible_cameras_per_identity: tuple[int, int] = (1, 4)
    infrared_cameras_per_identity: tuple[int, int] = (1, 2)
    images_per_camera: tuple[int, int] = (2, 4)
    image_size: tuple[int, int] = (64, 32)
    style_strength: float = 1.0
    infrared_strength: float = 1.0
    occlusion_p: float = 0.25
    # Added later: left out of ``to_json`` at its default, so a seed still writes the same files.
    infrared_from_visible: float = 0.0

    def __post_init__(self):
        for name in ("visible_cameras_per_identity", "infrared_cameras_per_identity",
                     "images_per_camera", "image_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        for kind in ("visible", "infrared"):
            count, (lo, hi) = (getattr(self, f"num_{kind}_cameras"),
                               getattr(self, f"{kind}_cameras_per_identity"))
            if count < 1:
                problems.append(f"num_{kind}_cameras={count} must be >= 1")
            if not 1 <= lo <= hi or lo > count:
                problems.append(f"{kind}_cameras_per_identity={(lo, hi)} must satisfy 1 <= lo <= hi "
                                f"and lo <= num_{kind}_cameras ({count})")
        if self.num_visible_cameras + self.num_infrared_cameras > 99:
            problems.append("at most 99 cameras in all")
        if not self.infrared_strength >= 0:
            problems.append(f"infrared_strength={self.infrared_strength} must be >= 0")
        if not 0 <= self.infrared_from_visible <= 1:
            problems.append(f"infrared_from_visible={self.infrared_from_visible} must be in [0, 1]")
        try:  # the shared fields, checked as the Market-layout generator checks them
            self.people()
        except ValueError as err:
            problems.append(str(err).removeprefix("invalid synthetic dataset config: "))
        if problems:
            raise ValueError("invalid visible-infrared synthetic config: " + "; ".join(problems))

    def people(self) -> SyntheticConfig:
        """The Market-layout config whose identities, visible cameras and images this shares."""
        return SyntheticConfig(
            seed=self.seed, num_cameras=self.num_visible_cameras + self.num_infrared_cameras,
            num_identities=self.num_identities, num_test_identities=self.num_test_identities,
            images_per_camera=self.images_per_camera, num_distractors=0,
            image_size=self.image_size, style_strength=self.style_strength,
            occlusion_p=self.occlusion_p)

    def camera_numbers(self) -> tuple[list[int], list[int]]:
        """SYSU-MM01 folder numbers (from 1) of the visible and the infrared cameras: SYSU's own
        (visible 1, 2, 4, 5; infrared 3, 6) for 4 + 2 cameras, else visible first."""
        v, i = self.num_visible_cameras, self.num_infrared_cameras
        if (v, i) == (4, 2):
            return [1, 2, 4, 5], [3, 6]
        return list(range(1, v + 1)), list(range(v + 1, v + i + 1))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()
                if not (k == "infrared_from_visible" and v == 0)}


def _grey(value: float) -> tuple[int, int, int]:
    return (_clip255(255 * value),) * 3


_IR_RANGE = (0.12, 0.95)  # garment reflectances in the near infrared


def _luminance(colour) -> float:
    r, g, b = colour
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255


@functools.lru_cache(maxsize=4096)
def _infrared_identity(seed: int, pid: int, from_visible: float = 0.0) -> _Identity:
    """``pid`` with every material's colour replaced by its near-infrared reflectance: drawn
    per material from its own stream, unrelated to the visible hue (``from_visible`` of each
    garment's reflectance follows its visible luminance instead, mapped onto the same range);
    skin reflects strongly in the near infrared, hair less."""
    rng = _rng(seed, 20, pid)
    visible = _identity_of(seed, pid)
    lo, hi = _IR_RANGE
    garments = {}
    for name in ("top", "top_second", "bottom", "cap", "shoes", "bag_colour"):
        drawn = rng.uniform(lo, hi)  # drawn at every setting: the stream stays the same
        if from_visible:
            drawn = (1 - from_visible) * drawn + from_visible * (lo + (hi - lo) * _luminance(getattr(visible, name)))
        garments[name] = _grey(drawn)
    return dataclasses.replace(visible, skin=_grey(rng.uniform(0.6, 0.8)),
                               hair=_grey(rng.uniform(0.3, 0.55)), **garments)


def _infrared_camera(seed: int, cam: int, strength: float) -> _Camera:
    """A grey scene and an intensity-only style: one gain and bias for all channels, lower
    contrast, more blur and noise than the colour cameras."""
    rng = _rng(seed, 21, cam)
    scene = dataclasses.replace(_sample_scene(rng), wall=_grey(rng.uniform(0.2, 0.7)),
                                floor=_grey(rng.uniform(0.15, 0.6)),
                                texture_colour=_grey(rng.uniform(0.1, 0.8)))
    gain = 1 + 0.15 * strength * rng.uniform(-1, 1)
    style = _Photometric(matrix=gain * np.eye(3), bias=np.full(3, 12 * strength * rng.uniform(-1, 1)),
                         contrast=float(0.8 + 0.1 * strength * rng.uniform(-1, 1)),
                         brightness=float(1 + 0.1 * strength * rng.uniform(-1, 1)),
                         blur=float(0.4 + 0.3 * strength * rng.random()),
                         noise=float(4 + 3 * strength * rng.random()))
    return _Camera(scene=scene, photometric=style)


def _to_three_equal_channels(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def _plan_visible_infrared(config: VisibleInfraredConfig, pid: int) -> list[tuple[int, int]]:
    """(camera index, image index) pairs of one identity: visible cameras are indices
    ``0..V-1``, infrared ones ``V..V+I-1``; at least one camera of each modality."""
    rng = _rng(config.seed, 23, pid)
    cams = []
    for offset, count, (lo, hi) in ((0, config.num_visible_cameras, config.visible_cameras_per_identity),
                                    (config.num_visible_cameras, config.num_infrared_cameras,
                                     config.infrared_cameras_per_identity)):
        n = int(rng.integers(lo, min(hi, count) + 1))
        cams += sorted(offset + int(c) for c in rng.choice(count, size=n, replace=False))
    lo, hi = config.images_per_camera
    return [(cam, k) for cam in cams for k in range(int(rng.integers(lo, hi + 1)))]


def _write_visible_infrared(folder: str, config: VisibleInfraredConfig) -> dict:
    people, visible = config.people(), config.num_visible_cameras
    cameras = [_sample_camera(config.seed, c, config.style_strength) if c < visible
               else _infrared_camera(config.seed, c, config.infrared_strength)
               for c in range(people.num_cameras)]
    numbers = [n for group in config.camera_numbers() for n in group]
    counts = {"train": 0, "test_visible": 0, "test_infrared": 0}
    for pid in range(1, config.num_identities + config.num_test_identities + 1):
        for cam, k in _plan_visible_infrared(config, pid):
            infrared = cam >= visible
            ident = (_infrared_identity(config.seed, pid, config.infrared_from_visible) if infrared
                     else _identity_of(config.seed, pid))
            image = _render(ident, cameras[cam], people, _rng(config.seed, 22, pid, cam, k))
            if infrared:
                image = _to_three_equal_channels(image)
            path = os.path.join(folder, f"cam{numbers[cam]}", f"{pid:04d}", f"{k + 1:04d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image.save(path, format="JPEG", quality=_JPEG_QUALITY)
            train = pid <= config.num_identities
            counts["train" if train else "test_infrared" if infrared else "test_visible"] += 1
    exp = os.path.join(folder, "exp")
    os.makedirs(exp)
    ids = {"train_id": range(1, config.num_identities + 1),
           "test_id": range(config.num_identities + 1, config.num_identities + config.num_test_identities + 1)}
    for name, pids in ids.items():
        with open(os.path.join(exp, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(",".join(str(p) for p in pids) + "\n")
    if config.camera_numbers()[1] != [3, 6]:
        with open(os.path.join(exp, "infrared_cameras.txt"), "w", encoding="utf-8") as f:
            f.write(",".join(str(n) for n in config.camera_numbers()[1]) + "\n")
    return counts


def generate_synthetic_vi(out: str | os.PathLike, config: VisibleInfraredConfig | None = None,
                          **options) -> dict:
    """Write a synthetic visible-infrared dataset in the SYSU-MM01 layout to ``out`` (new or
    empty; written next to it first and moved in, ``meta.json`` last); return its meta.

    ``root/camN/PPPP/KKKK.jpg`` (train pids ``1..P``, test pids ``P+1..P+Q``),
    ``exp/train_id.txt`` and ``exp/test_id.txt``, and ``exp/infrared_cameras.txt`` when the
    infrared cameras are not SYSU-MM01's 3 and 6. Read it with
    :func:`timm_reid.data.load_sysumm01`. ``options`` are :class:`VisibleInfraredConfig` fields.
    """
    if config is None:
        valid = [f.name for f in dataclasses.fields(VisibleInfraredConfig)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown visible-infrared option(s) {unknown}; valid: {', '.join(valid)}")
        config = VisibleInfraredConfig(**options)
    return _write_dataset(out, ".synthetic-vi-", lambda folder: {
        "generator": "timm_reid.data.synthetic", "layout": "sysumm01",
        "format_version": _FORMAT_VERSION, "config": config.to_json(),
        "counts": _write_visible_infrared(folder, config)})


# ---------------------------------------------------------------- loading and caching

def default_cache_dir() -> str:
    """``$TIMM_REID_CACHE`` or ``~/.cache/timm_reid``."""
    return os.environ.get("TIMM_REID_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "timm_reid"))


def load_synthetic(root: str | os.PathLike | None = None, **options) -> ReIDDataset:
    """Generate (if missing) and load a synthetic dataset as Market-1501 (name "synthetic").

    ``root=None`` uses ``default_cache_dir()/synthetic-<config hash>``. An existing
    ``root/meta.json`` is reused when its config equals the requested one, and is an
    error otherwise (pass another root). See :class:`SyntheticConfig` for the options and
    expected counts.
    """
    config = _config_from(options)
    if root is None:
        digest = hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode())
        root = os.path.join(default_cache_dir(), f"synthetic-{digest.hexdigest()[:12]}")
    root = os.fspath(root)
    meta_path = os.path.join(root, "meta.json")
    if not os.path.isfile(meta_path):
        try:
            generate_synthetic(root, config)
        except FileExistsError:
            if not os.path.isfile(meta_path):  # not a concurrent writer: a foreign folder
                raise
    _check_meta(meta_path, config)
    dataset = load_market1501(root, name="synthetic")
    return dataclasses.replace(dataset, num_cameras=config.num_cameras)


def check_synthetic_options(root: str | os.PathLike, **options) -> SyntheticConfig:
    """The config ``load_synthetic(root, **options)`` would use, checked without writing anything:
    invalid options, or an existing ``root/meta.json`` of another config, raise ``ValueError``."""
    config = _config_from(options)
    meta_path = os.path.join(os.fspath(root), "meta.json")
    if os.path.isfile(meta_path):
        _check_meta(meta_path, config)
    return config


def _check_meta(meta_path: str, config: SyntheticConfig) -> None:
    with open(meta_path, encoding="utf-8") as f:
        stored = json.load(f).get("config", {})
    wanted = config.to_json()
    # Both ways: a later field is absent at its default, in the stored config or the wanted one.
    diff = {k: (stored.get(k), wanted.get(k)) for k in sorted(set(stored) | set(wanted))
            if stored.get(k) != wanted.get(k)}
    if diff:
        shown = ", ".join(f"{k}: stored {a!r} != requested {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{meta_path} was generated with a different config ({shown}); pass "
                         "another root or root=None to use the cache")


# ---------------------------------------------------------------- preview

def save_contact_sheet(records: Sequence[Record], path: str | os.PathLike, *,
                       num_identities: int = 12, num_cameras: int | None = None,
                       scale: int = 2) -> None:
    """Save a PNG grid: one row per identity (the ``num_identities`` smallest pids >= 0),
    one column per camera (first image of that identity in that camera; grey if none)."""
    pids = sorted({r.pid for r in records if r.pid >= 0})[:num_identities]
    cams = num_cameras or 1 + max(r.camid for r in records)
    first = {}
    for r in records:
        first.setdefault((r.pid, r.camid), r.path)
    with Image.open(records[0].path) as im:
        w, h = im.size
    sheet = Image.new("RGB", (cams * (w + 2) * scale, len(pids) * (h + 2) * scale), (128,) * 3)
    for row, pid in enumerate(pids):
        for cam in range(cams):
            if (pid, cam) in first:
                with Image.open(first[pid, cam]) as im:
                    tile = im.convert("RGB").resize((w * scale, h * scale),
                                                    Image.Resampling.NEAREST)
                sheet.paste(tile, (cam * (w + 2) * scale, row * (h + 2) * scale))
    sheet.save(path)


# ---------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    from timm_reid._cli import prog_name

    d = SyntheticConfig()
    p = argparse.ArgumentParser(
        prog=prog_name("timm-reid-synthetic", "timm_reid.data.synthetic"), allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write a synthetic multi-camera person ReID dataset (Market-1501 layout).")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same files)")
    p.add_argument("--modality", choices=("visible", "vi"), default="visible",
                   help="visible: Market-1501 layout; vi: visible + infrared cameras in the "
                   "SYSU-MM01 layout (read it with --dataset sysumm01)")
    p.add_argument("--num-cameras", type=int, default=d.num_cameras, help="cameras")
    p.add_argument("--visible-cameras", type=int, default=VisibleInfraredConfig.num_visible_cameras,
                   help="--modality vi: visible cameras")
    p.add_argument("--infrared-cameras", type=int, default=VisibleInfraredConfig.num_infrared_cameras,
                   help="--modality vi: infrared cameras")
    p.add_argument("--infrared-strength", type=float, default=VisibleInfraredConfig.infrared_strength,
                   help="--modality vi: how far infrared cameras differ from each other")
    p.add_argument("--infrared-from-visible", type=float, default=VisibleInfraredConfig.infrared_from_visible,
                   metavar="SHARE", help="--modality vi: share (0-1) of each garment's infrared "
                   "reflectance that follows its visible luminance (default 0: independent)")
    p.add_argument("--num-identities", type=int, default=d.num_identities,
                   help="training identities")
    p.add_argument("--num-test-identities", type=int, default=d.num_test_identities,
                   help="query/gallery identities, disjoint from the training ones")
    p.add_argument("--cameras-per-identity", type=int, nargs=2, default=d.cameras_per_identity,
                   metavar=("LO", "HI"), help="cameras each identity appears in")
    p.add_argument("--images-per-camera", type=int, nargs=2, default=d.images_per_camera,
                   metavar=("LO", "HI"), help="images of an identity per camera")
    p.add_argument("--num-distractors", type=int, default=d.num_distractors,
                   help="gallery images of pid 0")
    p.add_argument("--image-size", type=int, nargs=2, default=d.image_size, metavar=("H", "W"),
                   help="image height and width")
    p.add_argument("--style-strength", type=float, default=d.style_strength,
                   help="camera style gap: 0 none, 1 weak (learnable), ~4 strong")
    p.add_argument("--occlusion-p", type=float, default=d.occlusion_p,
                   help="probability of an occluder per image")
    for name, what in (("cast", "colour gain, bias and channel mixing"),
                       ("illumination", "contrast and brightness"), ("blur", "blur and camera noise"),
                       ("scene", "scene, person scale and position"), ("viewpoint", "preferred viewpoint")):
        p.add_argument(f"--{name}-strength", type=float, default=None,
                       help=f"camera gap in {what} alone (default: --style-strength)")
    p.add_argument("--resolution-strength", type=float, default=d.resolution_strength,
                   help="cameras with coarser resolution: up to 1 + 0.5 x this times coarser")
    p.add_argument("--identity-cues", nargs="+", choices=IDENTITY_CUES, default=list(d.identity_cues),
                   help="attributes that tell identities apart; the others are shared by all")
    p.add_argument("--camera-weights", type=float, nargs="+", default=list(d.camera_weights),
                   metavar="W", help="uneven camera sizes: one relative weight per camera for "
                   "drawing an identity's cameras (default: all equal)")
    p.add_argument("--contact-sheet", metavar="PNG",
                   help="also save a preview grid (training identities x cameras)")
    return p


def _visible_infrared_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    d = SyntheticConfig()
    ignored = [flag for flag, value, default in (
        ("--num-cameras", args.num_cameras, d.num_cameras),
        ("--cameras-per-identity", tuple(args.cameras_per_identity), d.cameras_per_identity),
        ("--num-distractors", args.num_distractors, d.num_distractors)) if value != default]
    if ignored:
        parser.error(f"{', '.join(ignored)}: not used with --modality vi (--visible-cameras and "
                     "--infrared-cameras count its cameras; each identity is seen by 1..all visible and "
                     "1..all infrared cameras; the gallery has no distractors)")
    visible = args.visible_cameras
    return VisibleInfraredConfig(
        seed=args.seed, num_visible_cameras=visible, num_infrared_cameras=args.infrared_cameras,
        num_identities=args.num_identities, num_test_identities=args.num_test_identities,
        visible_cameras_per_identity=(1, max(1, visible)),
        infrared_cameras_per_identity=(1, max(1, args.infrared_cameras)),
        images_per_camera=args.images_per_camera, image_size=args.image_size,
        style_strength=args.style_strength, infrared_strength=args.infrared_strength,
        infrared_from_visible=args.infrared_from_visible, occlusion_p=args.occlusion_p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    vi = args.modality == "vi"
    try:
        if vi:
            config = _visible_infrared_config(args, parser)
        else:
            config = _config_from({k: v for k, v in vars(args).items() if k not in _CLI_ONLY})
    except ValueError as err:
        parser.error(str(err))
    try:
        meta = (generate_synthetic_vi if vi else generate_synthetic)(args.out, config)
    except FileExistsError as err:
        parser.error(str(err))
    dataset = (load_sysumm01(args.out, name="synthetic-vi") if vi
               else load_market1501(args.out, name="synthetic"))
    print(dataset.summary())
    print(f"generated {sum(meta['counts'].values())} images in {meta['seconds']} s")
    if args.contact_sheet:
        save_contact_sheet(dataset.train, args.contact_sheet, num_cameras=dataset.num_cameras)
        print(f"contact sheet: {args.contact_sheet}")
    return 0


_CLI_ONLY = ("out", "contact_sheet", "modality", "visible_cameras", "infrared_cameras", "infrared_strength",
             "infrared_from_visible")


if __name__ == "__main__":
    sys.exit(main())
