import pytest
import torch
from PIL import Image

from timm_reid.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms


@pytest.fixture
def image():
    """A 40x20 image whose left half is red and right half blue."""
    im = Image.new("RGB", (20, 40), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 40))
    return im


def test_eval_resizes_and_normalises(image):
    x = build_transforms(64, 32, train=False)(image)
    assert x.shape == (3, 64, 32) and x.dtype == torch.float32
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert x[0, 32, 2].item() == pytest.approx(red, abs=1e-5)  # red channel, left half
    assert torch.equal(x, build_transforms(64, 32, train=False)(image))


def test_train_flip_probability_one_mirrors(image):
    flip = build_transforms(40, 20, train=True, flip_p=1.0, pad=0, random_erasing_p=0)
    keep = build_transforms(40, 20, train=True, flip_p=0.0, pad=0, random_erasing_p=0)
    assert torch.equal(flip(image), keep(image).flip(-1))
    assert torch.equal(keep(image), build_transforms(40, 20, train=False)(image))


def test_train_pad_crop_and_erasing_are_random_but_seeded(image):
    transform = build_transforms(40, 20, train=True, random_erasing_p=1.0)
    torch.manual_seed(0)
    a = [transform(image) for _ in range(4)]
    torch.manual_seed(0)
    b = [transform(image) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (3, 40, 20) for x in a)
    assert not all(torch.equal(a[0], x) for x in a[1:])
    assert all((x == 0).all(dim=0).any() for x in a)  # an erased (zero) patch in every image


@pytest.mark.parametrize("kwargs, message", [
    (dict(flip_p=1.5), "flip_p=1.5"), (dict(random_erasing_p=-0.1), "random_erasing_p=-0.1"),
    (dict(pad=-1), "pad=-1")])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(64, 32, train=True, **kwargs)
    with pytest.raises(ValueError, match="height=0"):
        build_transforms(0, 32, train=False)
