"""Unlabeled video crops for self-supervised pretraining: a folder layout, its loader, and a
synthetic street-video generator that writes it.

Layout (what a user's detector should write; any image extension of ``.jpg``, ``.jpeg``, ``.png``)::

    ROOT/videos/<video>/<frame>_<det>.jpg     frame: integer frame index, det: detection index

Each ``<video>`` folder is one video of one camera; crops of one frame share ``<frame>``. Nothing
else is needed: no identities, no tracks. :func:`load_video_crops` reads it.

The synthetic generator (:func:`generate_video`, ``python -m timm_reid.data.video``) draws people
with the figures of :mod:`timm_reid.data.synthetic`:

- every video has its own camera (scene and photometric style drawn from the video seed's own
  streams, independent of the ReID benchmark's cameras) and its own people (identities drawn from
  the video seed's streams, so they are not the benchmark's train or test identities);
- people enter and leave (tracks of ``track_length`` frames starting at random times, so a crop
  may have no partner in another frame), walk on smooth straight paths that may turn once
  (position, depth and so scale, view and walking phase change frame to frame);
- a crop also shows the other people standing near the person (occlusion between people, drawn
  in depth order), sometimes a static occluder, and detector-like box jitter;
- detections of a frame are numbered left to right, so ``<det>`` says nothing about the track.

The true track of every crop goes to ``ROOT/tracks.csv`` (``video,frame,det,track``), read only by
:func:`read_tracks` for diagnostics (pair precision), never by training. ``ROOT/meta.json``
(config and counts) is written last; the whole folder is written next to ``ROOT`` and renamed into
place, so a crash never leaves half a dataset. Same seed, same files (bitwise).

Expected counts with the defaults (seed 202, 48 videos x 40 frames, about 4 people per frame):
6,351 crops of 479 tracks; other seeds differ by a few percent, ``meta.json`` records the counts.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from timm_reid._permissions import as_umask_allows
from timm_reid.data.synthetic import (_Camera, _Painter, _apply_photometric, _rng, _sample_identity,
                                      _sample_photometric, _sample_scene)

__all__ = ["VideoConfig", "VideoCrops", "Crop", "generate_video", "load_video_crops", "read_tracks",
           "VIDEO_FOLDER", "TRACKS_FILE", "main"]

VIDEO_FOLDER = "videos"
TRACKS_FILE = "tracks.csv"
_FORMAT_VERSION = 1
_JPEG_QUALITY = 92
_EXTENSIONS = (".jpg", ".jpeg", ".png")
_NAME = re.compile(r"^(\d+)_(\d+)$")
# Stream keys of the video generator's random numbers (the ReID generator uses 0..6).
_S_IDENTITY, _S_CAMERA, _S_TRACKS, _S_CROP = 20, 21, 22, 23


@dataclass(frozen=True)
class VideoConfig:
    """Settings of the synthetic street video (see the module docstring)."""

    seed: int = 202
    num_videos: int = 48
    num_frames: int = 40
    people_per_frame: float = 4.0
    max_people: int = 8
    track_length: tuple[int, int] = (8, 40)
    image_size: tuple[int, int] = (64, 32)
    style_strength: float = 1.0
    occlusion_p: float = 0.15
    box_jitter: float = 0.08

    def __post_init__(self):
        for name in ("track_length", "image_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if self.num_videos < 1 or self.num_frames < 2:
            problems.append(f"num_videos={self.num_videos} must be >= 1, num_frames={self.num_frames} >= 2")
        if not 0 < self.people_per_frame <= self.max_people <= 99:
            problems.append(f"people_per_frame={self.people_per_frame} and max_people={self.max_people} "
                            "must satisfy 0 < people_per_frame <= max_people <= 99")
        if not 1 <= self.track_length[0] <= self.track_length[1]:
            problems.append(f"track_length={self.track_length} must satisfy 1 <= lo <= hi")
        if self.image_size[0] < 16 or self.image_size[1] < 8:
            problems.append(f"image_size={self.image_size} must be at least (16, 8) (H, W)")
        if not (self.style_strength >= 0 and 0 <= self.occlusion_p <= 1 and 0 <= self.box_jitter <= 0.3):
            problems.append("style_strength must be >= 0, occlusion_p in [0, 1], box_jitter in [0, 0.3]")
        if problems:
            raise ValueError("invalid synthetic video config: " + "; ".join(problems))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------- people moving through a video

@dataclass(frozen=True)
class _Track:
    track: int        # global track id (video * 10000 + index in the video)
    start: int        # first frame (may be before frame 0: already there when the video starts)
    length: int
    x0: float         # horizontal position in frame widths at ``start``
    depth0: float     # 0 far .. 1 near at ``start``
    turn: int         # frame offset of the one turn (>= length: no turn)
    moves: tuple      # ((vx, vdepth) before the turn, after it), per frame
    phase0: float     # walking phase at ``start``
    cadence: float    # phase advance per frame


class _Person(NamedTuple):
    track: int
    x: float
    depth: float
    view: str
    pose: tuple


def _sample_move(rng: np.random.Generator) -> tuple[float, float]:
    if rng.random() < 0.6:  # across the street: side view
        return float(rng.choice([-1, 1]) * rng.uniform(0.012, 0.03)), float(rng.uniform(-0.005, 0.005))
    return float(rng.uniform(-0.006, 0.006)), float(rng.choice([-1, 1]) * rng.uniform(0.01, 0.025))


def _plan_tracks(config: VideoConfig, video: int) -> list[_Track]:
    """Tracks arriving as a Poisson process so that about ``people_per_frame`` are present."""
    rng = _rng(config.seed, _S_TRACKS, video)
    lo, hi = config.track_length
    rate = config.people_per_frame / ((lo + hi) / 2)
    tracks, present = [], np.zeros(config.num_frames, dtype=int)
    for start in range(-hi + 1, config.num_frames):
        for _ in range(int(rng.poisson(rate))):
            length = int(rng.integers(lo, hi + 1))
            first, last = max(start, 0), min(start + length, config.num_frames)
            track = _Track(track=video * 10000 + len(tracks), start=start, length=length,
                           x0=float(rng.uniform(0.05, 0.95)), depth0=float(rng.uniform(0.1, 0.9)),
                           turn=int(rng.integers(1, 2 * length + 1)), moves=(_sample_move(rng), _sample_move(rng)),
                           phase0=float(rng.uniform(0, 2 * math.pi)), cadence=float(rng.uniform(0.6, 1.1)))
            if first >= last or (present[first:last] >= config.max_people).any():
                continue  # never on screen, or the street is full
            present[first:last] += 1
            tracks.append(track)
    return tracks


def _person_at(track: _Track, frame: int) -> _Person:
    t = frame - track.start
    before, after = track.moves
    t0, t1 = min(t, track.turn), max(t - track.turn, 0)
    x = track.x0 + before[0] * t0 + after[0] * t1
    depth = float(np.clip(track.depth0 + before[1] * t0 + after[1] * t1, 0.0, 1.0))
    vx, vdepth = before if t < track.turn else after
    view = "side" if abs(vx) > abs(vdepth) else ("front" if vdepth > 0 else "back")
    phase = track.phase0 + track.cadence * t
    return _Person(track.track, float(x), depth, view, (-math.sin(phase), math.sin(phase), math.sin(phase)))


def _frames(config: VideoConfig, tracks: list[_Track]) -> list[list[_Person]]:
    """People visible in every frame (inside the picture), left to right: the detections."""
    frames = []
    for frame in range(config.num_frames):
        people = [_person_at(tr, frame) for tr in tracks if tr.start <= frame < tr.start + tr.length]
        frames.append(sorted((p for p in people if 0.0 <= p.x <= 1.0), key=lambda p: (p.x, p.track)))
    return frames


# ---------------------------------------------------------------- drawing a crop

def _scale(depth: float) -> float:
    return 0.6 + 0.4 * depth  # person height relative to a near person


def _render_crop(people: list[_Person], det: int, identities: dict, camera: _Camera, config: VideoConfig,
                 rng: np.random.Generator) -> Image.Image:
    """The detector crop around ``people[det]``, with the neighbours it overlaps."""
    me = people[det]
    painter = _Painter(config.image_size, rng)
    painter.background(camera.scene)
    crop_width = 0.1 * _scale(me.depth)  # in frame widths
    hp = painter.h * 0.86 * identities[me.track].height
    foot = painter.h * 0.97
    for other in sorted(people, key=lambda p: (p.depth, p.track)):  # far ones first
        dx = (other.x - me.x) / crop_width
        if other is not me and abs(dx) > 1.2:
            continue
        ratio = _scale(other.depth) / _scale(me.depth)
        painter.person_at(identities[other.track], other.view, cx=painter.w * (0.5 + dx),
                          foot=foot + 0.25 * painter.h * (ratio - 1), hp=hp * ratio * (
                              identities[other.track].height / identities[me.track].height),
                          pose=other.pose)
    if rng.random() < config.occlusion_p:
        painter.occluder()
    h, w = config.image_size
    zx, zy = rng.uniform(0.0, config.box_jitter, size=2)  # detector box: zoom and shift
    x0, y0 = rng.uniform(0, 2 * zx) * painter.w, rng.uniform(0, 2 * zy) * painter.h
    box = (x0, y0, x0 + (1 - 2 * zx) * painter.w, y0 + (1 - 2 * zy) * painter.h)
    image = painter.image.resize((w, h), Image.Resampling.BOX, box=box)
    return _apply_photometric(image, camera.photometric, rng)


def _video_camera(config: VideoConfig, video: int) -> _Camera:
    rng = _rng(config.seed, _S_CAMERA, video)
    return _Camera(scene=_sample_scene(rng), photometric=_sample_photometric(rng, config.style_strength))


def _write_video(folder: str, config: VideoConfig, video: int, writer) -> dict:
    tracks = _plan_tracks(config, video)
    identities = {tr.track: _sample_identity(_rng(config.seed, _S_IDENTITY, video, tr.track % 10000))
                  for tr in tracks}
    camera = _video_camera(config, video)
    name = f"v{video:03d}"
    os.makedirs(os.path.join(folder, VIDEO_FOLDER, name))
    crops, seen = 0, set()
    for frame, people in enumerate(_frames(config, tracks)):
        for det, person in enumerate(people):
            image = _render_crop(people, det, identities, camera, config,
                                 _rng(config.seed, _S_CROP, video, frame, det))
            image.save(os.path.join(folder, VIDEO_FOLDER, name, f"{frame:06d}_{det:02d}.jpg"),
                       format="JPEG", quality=_JPEG_QUALITY)
            writer.writerow([name, frame, det, person.track])
            crops, seen = crops + 1, seen | {person.track}
    return {"crops": crops, "tracks": len(seen)}


def generate_video(out: str | os.PathLike, config: VideoConfig | None = None, **options) -> dict:
    """Write synthetic street video crops to ``out`` (must not exist or be empty); return its meta.

    ``options`` are :class:`VideoConfig` fields, used when ``config`` is None.
    """
    config = config if config is not None else _config_from(options)
    out = os.fspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another output folder "
                              "or delete it first")
    start = time.perf_counter()
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = as_umask_allows(tempfile.mkdtemp(prefix=".video-", dir=parent))  # mkdtemp: 0700
    try:
        with open(os.path.join(tmp, TRACKS_FILE), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "frame", "det", "track"])
            per_video = [_write_video(tmp, config, v, writer) for v in range(config.num_videos)]
        counts = {"videos": config.num_videos, "frames": config.num_videos * config.num_frames,
                  "crops": sum(c["crops"] for c in per_video), "tracks": sum(c["tracks"] for c in per_video)}
        meta = {"generator": "timm_reid.data.video", "format_version": _FORMAT_VERSION,
                "config": config.to_json(), "counts": counts}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above); rename needs it gone
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**meta, "seconds": round(time.perf_counter() - start, 2)}


def _config_from(options: dict) -> VideoConfig:
    valid = [f.name for f in dataclasses.fields(VideoConfig)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown synthetic video option(s) {unknown}; valid: {', '.join(valid)}")
    return VideoConfig(**options)


def load_or_generate_video(root: str | os.PathLike, **options) -> "VideoCrops":
    """Load ``root``; generate it first when it holds no ``meta.json`` (same config required)."""
    config = _config_from(options)
    root = os.fspath(root)
    meta_path = os.path.join(root, "meta.json")
    if not os.path.isfile(meta_path):
        generate_video(root, config)
    with open(meta_path, encoding="utf-8") as f:
        stored = json.load(f).get("config")
    if stored != config.to_json():
        raise ValueError(f"{meta_path} was generated with another config ({stored}); requested "
                         f"{config.to_json()}: pass another folder")
    return load_video_crops(root)


# ---------------------------------------------------------------- loading

class Crop(NamedTuple):
    """One detection: image path, video index (into ``VideoCrops.videos``), frame, detection."""

    path: str
    video: int
    frame: int
    det: int


@dataclass(frozen=True)
class VideoCrops:
    """Crops grouped by video and frame; ``crops`` sorted by (video, frame, det)."""

    root: str
    videos: list[str]
    crops: list[Crop]

    def frames(self, video: int) -> dict[int, list[int]]:
        """Frame index -> indices into ``crops`` of that frame's detections, frames in order."""
        out: dict[int, list[int]] = {}
        for i, c in enumerate(self.crops):
            if c.video == video:
                out.setdefault(c.frame, []).append(i)
        return out

    def summary(self) -> str:
        frames = len({(c.video, c.frame) for c in self.crops})
        return (f"video crops ({self.root}): {len(self.videos)} videos, {frames} frames, "
                f"{len(self.crops)} crops ({len(self.crops) / max(frames, 1):.1f} per frame)")


def load_video_crops(root: str | os.PathLike) -> VideoCrops:
    """Read the layout ``ROOT/videos/<video>/<frame>_<det>.<ext>`` (see the module docstring).

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` naming the offending
    files for anything else that does not fit (stray files, bad names, duplicates, empty videos).
    """
    root = os.fspath(root)
    folder = os.path.join(root, VIDEO_FOLDER)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} does not exist; video crops go to ROOT/{VIDEO_FOLDER}/<video>/"
                                "<frame>_<det>.jpg (one folder per video)")
    entries = sorted(os.listdir(folder))
    stray = [e for e in entries if not os.path.isdir(os.path.join(folder, e))]
    if stray:
        raise ValueError(f"{folder} must hold one folder per video, found files {stray[:5]}"
                         f"{' ...' if len(stray) > 5 else ''}; move them into a video folder")
    if not entries:
        raise ValueError(f"{folder} holds no video folders")
    crops, bad, empty = [], [], []
    for v, name in enumerate(entries):
        parsed = _read_video_folder(os.path.join(folder, name), v, bad)
        if not parsed:
            empty.append(name)
        crops += parsed
    if bad:
        raise ValueError(f"{len(bad)} file(s) in {folder} do not fit <video>/<frame>_<det>"
                         f"{'|'.join(_EXTENSIONS)} (integers, one image per frame and detection), e.g. "
                         f"{bad[:5]}; rename or remove them")
    if empty:
        raise ValueError(f"video folder(s) {empty[:5]} in {folder} hold no crops; remove them")
    return VideoCrops(root=root, videos=entries, crops=crops)


def _read_video_folder(path: str, video: int, bad: list[str]) -> list[Crop]:
    crops, seen = [], {}
    for name in sorted(os.listdir(path)):
        stem, ext = os.path.splitext(name)
        match = _NAME.match(stem)
        shown = os.path.join(os.path.basename(path), name)
        if ext.lower() not in _EXTENSIONS or match is None or not os.path.isfile(os.path.join(path, name)):
            bad.append(shown)
            continue
        key = (int(match.group(1)), int(match.group(2)))
        if key in seen:
            bad.append(f"{shown} (same frame and detection as {seen[key]})")
            continue
        seen[key] = name
        crops.append(Crop(os.path.join(path, name), video, *key))
    return sorted(crops, key=lambda c: (c.frame, c.det))


def read_tracks(root: str | os.PathLike, crops: VideoCrops) -> list[int]:
    """True track id of every crop of ``crops`` (diagnostics only: training never calls this)."""
    path = os.path.join(os.fspath(root), TRACKS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: only synthetic video has true tracks")
    with open(path, newline="", encoding="utf-8") as f:
        table = {(r["video"], int(r["frame"]), int(r["det"])): int(r["track"]) for r in csv.DictReader(f)}
    missing = [c.path for c in crops.crops if (crops.videos[c.video], c.frame, c.det) not in table]
    if missing:
        raise ValueError(f"{path} has no track for {len(missing)} crop(s), e.g. {missing[:3]}")
    return [table[crops.videos[c.video], c.frame, c.det] for c in crops.crops]


# ---------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    d = VideoConfig()
    p = argparse.ArgumentParser(prog="python -m timm_reid.data.video",
                                description="Write synthetic street-video person crops "
                                            "(ROOT/videos/<video>/<frame>_<det>.jpg, tracks in ROOT/tracks.csv).")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-videos", type=int, default=d.num_videos)
    p.add_argument("--num-frames", type=int, default=d.num_frames)
    p.add_argument("--people-per-frame", type=float, default=d.people_per_frame)
    p.add_argument("--max-people", type=int, default=d.max_people)
    p.add_argument("--track-length", type=int, nargs=2, default=d.track_length, metavar=("LO", "HI"))
    p.add_argument("--image-size", type=int, nargs=2, default=d.image_size, metavar=("H", "W"))
    p.add_argument("--style-strength", type=float, default=d.style_strength)
    p.add_argument("--occlusion-p", type=float, default=d.occlusion_p)
    p.add_argument("--box-jitter", type=float, default=d.box_jitter)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        meta = generate_video(args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(load_video_crops(args.out).summary())
    print(f"generated {meta['counts']['crops']} crops of {meta['counts']['tracks']} tracks in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
