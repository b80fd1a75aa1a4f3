"""A Market-1501 layout fixture for the pipeline tests."""
import pytest

from tests.train.tiny import TINY_DATA, TINY_VI_DATA
from timm_reid.data.synthetic import SyntheticConfig, generate_synthetic


@pytest.fixture(scope="session")
def market_dir(tmp_path_factory):
    """A Market-1501 layout folder (bounding_box_train, query, bounding_box_test) of 64x32 images
    (12 train identities, 8 test identities, 3 cameras)."""
    root = tmp_path_factory.mktemp("market")
    generate_synthetic(root / "Market-1501", SyntheticConfig(seed=3, **TINY_DATA))
    return root / "Market-1501"


@pytest.fixture(scope="session")
def vi_dir(tmp_path_factory):
    """A synthetic visible-infrared folder in the SYSU-MM01 layout: 3 visible + 2 infrared cameras,
    10 train and 6 test identities, 64x32 images (seconds to generate)."""
    from timm_reid.data.synthetic import generate_synthetic_vi

    root = tmp_path_factory.mktemp("vi") / "sysu"
    generate_synthetic_vi(root, **TINY_VI_DATA)
    return root
