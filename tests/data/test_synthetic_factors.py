"""Camera-gap factors and identity cues of the synthetic generator, one at a time."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from timm_reid.data.synthetic import (CAMERA_FACTORS, IDENTITY_CUES, SyntheticConfig, _blend_scene,
                                      _identity_of, _NEUTRAL_VIEW_P, _render, _rng, _sample_camera,
                                      _sample_scene, _with_cues, generate_synthetic, main)

NO_GAP = {f"{name}_strength": 0.0 for name in CAMERA_FACTORS}


def config_with(**strengths):
    return SyntheticConfig(seed=4, num_cameras=4, image_size=(64, 32), occlusion_p=0.0,
                           **{**NO_GAP, **strengths})


def render(config, cam, pid=7, image_seed=99):
    camera = _sample_camera(config.seed, cam, config.style_strength, config)
    ident = _with_cues(_identity_of(config.seed, pid), config.seed, config.identity_cues)
    return np.asarray(_render(ident, camera, config, _rng(image_seed)), dtype=np.float32)


def high_frequency(image):
    grey = image.mean(axis=2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_without_any_gap_every_camera_renders_the_same_image():
    config = config_with()
    first = render(config, 0)
    for cam in (1, 2, 3):
        np.testing.assert_array_equal(render(config, cam), first)


@pytest.mark.parametrize("factor", CAMERA_FACTORS + ("resolution",))
def test_each_factor_alone_makes_cameras_differ(factor):
    config = config_with(**{f"{factor}_strength": 2.0})
    off = dataclasses.replace(config, **{f"{factor}_strength": 0.0})
    # the viewpoint is drawn per image from the camera's preference: look at several images
    differing = sum(np.abs(render(config, 0, image_seed=s) - render(config, cam, image_seed=s)).mean() > 0.5
                    for s in range(6) for cam in (1, 2, 3))
    assert differing >= (3 if factor == "viewpoint" else 12), factor  # of 18 image pairs
    # switched off again: identical (the factor's draws moved nothing else)
    for s in range(3):
        np.testing.assert_array_equal(render(off, 1, image_seed=s), render(off, 0, image_seed=s))


def test_cast_changes_colour_not_structure():
    config = config_with(cast_strength=2.0)
    a, b = render(config, 0), render(config, 1)
    assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() > 3          # per-channel shift
    assert np.corrcoef(a.mean(2).ravel(), b.mean(2).ravel())[0, 1] > 0.97


def test_blur_and_resolution_remove_detail():
    """The same camera with and without its blur (same noise) or coarser resolution."""
    for factor in ("blur", "resolution"):
        config = config_with(**{f"{factor}_strength": 4.0})
        cams = [_sample_camera(config.seed, c, config.style_strength, config) for c in range(4)]
        worst = max(cams, key=lambda c: c.resolution if factor == "resolution" else c.photometric.blur)
        sharp = (dataclasses.replace(worst, resolution=1.0) if factor == "resolution" else
                 dataclasses.replace(worst, photometric=dataclasses.replace(worst.photometric, blur=0.0)))
        ident = _identity_of(config.seed, 7)
        detail = [high_frequency(np.asarray(_render(ident, c, config, _rng(99)), dtype=np.float32))
                  for c in (worst, sharp)]
        assert detail[0] < 0.85 * detail[1], (factor, detail)


def test_illumination_changes_contrast_and_brightness_only():
    config = config_with(illumination_strength=3.0)
    a, b = render(config, 0), render(config, 2)
    assert abs(a.mean() - b.mean()) > 2 or abs(a.std() - b.std()) > 2
    chroma = lambda x: x - x.mean(axis=2, keepdims=True)   # a global affine of the intensity
    assert np.corrcoef(chroma(a).ravel(), chroma(b).ravel())[0, 1] > 0.97


def test_viewpoint_and_scene_weights_are_separate():
    rng = _rng(1)
    camera, own = _sample_scene(_rng(2)), _sample_scene(_rng(3))
    scene_only = _blend_scene(camera, own, 1.0, rng, view_a=0.0)
    assert scene_only.view_p == _NEUTRAL_VIEW_P and scene_only.wall == camera.wall
    view_only = _blend_scene(camera, own, 0.0, rng, view_a=1.0)
    np.testing.assert_allclose(view_only.view_p, camera.view_p)
    assert view_only.wall == own.wall


def test_identity_cues_share_the_left_out_attributes():
    fields = {"colour": "top", "pattern": "top_pattern", "shape": "width"}
    for cues in (("pattern", "shape"), ("colour", "shape"), ("colour", "pattern")):
        people = [_with_cues(_identity_of(5, pid), 5, cues) for pid in range(1, 30)]
        for cue, field in fields.items():
            distinct = len({getattr(p, field) for p in people})
            assert (distinct > 1) == (cue in cues), (cues, cue)
    # no cue at all would make everyone the reference person; the config refuses it
    with pytest.raises(ValueError, match="non-empty subset"):
        SyntheticConfig(identity_cues=())
    assert SyntheticConfig(identity_cues=("shape", "colour")).identity_cues == ("colour", "shape")


def test_shared_colours_keep_pattern_and_shape_apart():
    config = config_with(identity_cues=("pattern", "shape"))
    a, b = _with_cues(_identity_of(4, 1), 4, config.identity_cues), _with_cues(_identity_of(4, 2), 4, config.identity_cues)
    assert a.top == b.top and a.bottom == b.bottom and a.skin == b.skin
    assert (a.top_pattern, a.width, a.bag) != (b.top_pattern, b.width, b.bag)


def test_factor_options_are_validated_and_recorded(tmp_path):
    with pytest.raises(ValueError, match="cast_strength=-1 must be >= 0"):
        SyntheticConfig(cast_strength=-1)
    with pytest.raises(ValueError, match="identity_cues"):
        SyntheticConfig(identity_cues=("colour", "gait"))
    meta = generate_synthetic(tmp_path / "f", seed=2, num_cameras=2, num_identities=2, num_test_identities=2,
                              num_distractors=0, image_size=(16, 8), viewpoint_strength=0.0,
                              identity_cues=("shape",))
    assert meta["config"]["viewpoint_strength"] == 0.0 and meta["config"]["identity_cues"] == ["shape"]
    assert "cast_strength" not in meta["config"]       # defaults stay out of meta.json
    assert main(["--out", str(tmp_path / "cli"), "--num-cameras", "2", "--num-identities", "2",
                 "--num-test-identities", "2", "--image-size", "16", "8", "--blur-strength", "3",
                 "--identity-cues", "colour", "pattern"]) == 0


def test_scene_factor_zero_is_one_scene_for_every_camera_not_one_per_image():
    """scene_strength=0: every image of every camera shows the dataset's one scene (up to the
    per-image jitter); style_strength=0 alone draws a new scene for every image, as it always did."""
    def wall_spread(config):
        corners = [render(config, cam, pid=pid, image_seed=s)[:4, :4].mean((0, 1))
                   for cam in range(4) for pid, s in ((3, 1), (5, 2), (8, 3))]
        return float(np.std(corners, axis=0).mean())
    shared = wall_spread(config_with())                           # every factor 0, scene included
    per_image = wall_spread(SyntheticConfig(seed=4, num_cameras=4, occlusion_p=0.0, style_strength=0.0))
    assert shared < 20 < per_image, (shared, per_image)   # 10.7 and 51.5 here
