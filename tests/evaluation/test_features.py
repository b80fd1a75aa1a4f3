"""extract_features(): flip averaging, normalisation, batch formats, IIDS camera aggregation."""

import pytest
import torch
from torch import nn

from timm_reid.evaluation import extract_features


class Embed(nn.Module):
    """A linear map of the flattened image; asymmetric so that flipping changes the output."""

    def __init__(self, returns_tuple=False):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(2 * 3 * 4, 5)
        self.returns_tuple = returns_tuple
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        out = self.linear(x.flatten(1))
        return (out, "logits") if self.returns_tuple else out


class CameraShift(nn.Module):
    """Stands in for a TNorm-patched model: converting to target t adds t + 10 * source camera."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2 * 3 * 4, 5)
        self.calls = []

    def forward(self, x, *, camids, convert, targets):
        self.calls.append((camids.tolist(), convert, targets.tolist()))
        shift = (targets + 10 * camids).float()[:, None]
        return self.linear(x.flatten(1)) + shift


def make_batches():
    torch.manual_seed(1)
    images = torch.randn(7, 2, 3, 4)
    pids = torch.arange(7) % 3
    camids = torch.arange(7) % 2
    return [(images[:4], pids[:4], camids[:4], "paths"), (images[4:], pids[4:], camids[4:])], images


def test_flip_averaged_normalised_features_and_metadata():
    model = Embed()
    batches, images = make_batches()
    features, pids, camids = extract_features(model, batches, progress=False)
    with torch.no_grad():
        expected = 0.5 * (model.linear(images.flatten(1)) + model.linear(images.flip(3).flatten(1)))
    torch.testing.assert_close(features, nn.functional.normalize(expected, dim=1))
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert pids.tolist() == [0, 1, 2, 0, 1, 2, 0] and camids.dtype == torch.int64
    assert camids.tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_no_flip_no_normalise_tuple_output_dict_batches():
    model = Embed(returns_tuple=True)
    batches, images = make_batches()
    dict_batches = [{"image": b[0], "pid": b[1], "camid": b[2]} for b in batches]
    features, _, _ = extract_features(model, dict_batches, flip=False, normalize=False,
                                      progress=False)
    with torch.no_grad():
        torch.testing.assert_close(features, model.linear(images.flatten(1)))


def test_runs_in_eval_mode_without_grad_and_restores_mode():
    model = Embed()
    model.train()
    batches, _ = make_batches()
    features, _, _ = extract_features(model, batches, progress=False)
    assert model.modes and not any(model.modes)
    assert model.training and not features.requires_grad


def test_camera_aggregation_sums_conversions_to_every_camera():
    model = CameraShift()
    batches, images = make_batches()
    features, _, camids = extract_features(model, batches, camera_aggregate=True, num_cameras=3,
                                           flip=False, normalize=False, progress=False)
    with torch.no_grad():
        base = model.linear(images.flatten(1))
    # sum over t in {0, 1, 2} of (base + t + 10 cam) = 3 base + 3 + 30 cam
    expected = 3 * base + 3 + 30 * camids.float()[:, None]
    torch.testing.assert_close(features, expected)
    assert [call[2][0] for call in model.calls[:3]] == [0, 1, 2]
    assert all(convert is True for _, convert, _ in model.calls)


def test_camera_aggregation_is_normalised_after_the_sum():
    model = CameraShift()
    batches, _ = make_batches()
    raw, _, _ = extract_features(model, batches, camera_aggregate=True, num_cameras=2,
                                 normalize=False, progress=False)
    unit, _, _ = extract_features(model, batches, camera_aggregate=True, num_cameras=2,
                                  progress=False)
    torch.testing.assert_close(unit, nn.functional.normalize(raw, dim=1))


@pytest.mark.parametrize("num_cameras", [None, 0, 2.0, True])
def test_camera_aggregation_needs_num_cameras(num_cameras):
    batches, _ = make_batches()
    with pytest.raises(ValueError, match="num_cameras"):
        extract_features(CameraShift(), batches, camera_aggregate=True, num_cameras=num_cameras)


@pytest.mark.parametrize(
    "loader, message",
    [([torch.zeros(2, 2, 3, 4)], "must yield"), ([{"image": torch.zeros(1, 2, 3, 4)}], "none of the pids keys"),
     ([], "no batches")],
)
def test_bad_loaders_raise(loader, message):
    with pytest.raises((TypeError, ValueError), match=message):
        extract_features(Embed(), loader, progress=False)


def test_model_must_return_features():
    class Scalar(nn.Module):
        def forward(self, x):
            return x.sum()

    batches, _ = make_batches()
    with pytest.raises(TypeError, match="feature tensor"):
        extract_features(Scalar(), batches, progress=False)


@pytest.mark.parametrize("keys", [("img", "pid", "camid"),          # torchreid
                                  ("images", "targets", "camids"),  # fast-reid
                                  ("image", "pids", "cams"), ("imgs", "labels", "cam")])
def test_dict_batches_with_common_key_names(keys):
    model = Embed()
    batches, _ = make_batches()
    expected = extract_features(model, batches, progress=False)
    dict_batches = [{**dict(zip(keys, b[:3])), "impath": ["x"] * len(b[0])} for b in batches]
    for got, want in zip(extract_features(model, dict_batches, progress=False), expected):
        torch.testing.assert_close(got, want)


def test_batch_fn_unpacks_any_batch_format():
    model = Embed()
    batches, _ = make_batches()
    expected = extract_features(model, batches, progress=False)
    nested = [{"inputs": {"pixels": b[0]}, "meta": (b[2], b[1])} for b in batches]
    got = extract_features(model, nested, progress=False,
                           batch_fn=lambda b: (b["inputs"]["pixels"], b["meta"][1], b["meta"][0]))
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w)
    with pytest.raises(TypeError, match="batch_fn must return"):
        extract_features(model, nested, progress=False, batch_fn=lambda b: b["inputs"]["pixels"])


def test_ambiguous_dict_batch_is_an_error():
    batch = {"img": torch.zeros(1, 2, 3, 4), "image": torch.zeros(1, 2, 3, 4), "pid": [0], "camid": [0]}
    with pytest.raises(ValueError, match=r"more than one of \(img, image\).*batch_fn"):
        extract_features(Embed(), [batch], progress=False)
