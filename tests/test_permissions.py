"""Written files and folders get the permissions the umask allows (safetensors writes 0600 and
mkdtemp creates 0700 whatever the umask; runs on a shared folder need the others to read them)."""
import os
import stat

import pytest
import torch

import timm_reid
from tests.train.tiny import TINY_DATA
from timm_reid.data.synthetic import SyntheticConfig, generate_synthetic
from timm_reid.data.video import generate_video


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_backbone_and_hub_files_follow_the_umask(tmp_path, umask):
    model = timm_reid.create_model("resnet10t", num_classes=0, aibn=[4])
    path = timm_reid.save_backbone(model, str(tmp_path / "backbone.safetensors"), model_name="resnet10t",
                                   input_size=(64, 32))
    assert _mode(path) == 0o666 & ~umask
    pytest.importorskip("huggingface_hub")
    folder = timm_reid.save_hub_folder(model, str(tmp_path / "hub"))
    assert _mode(os.path.join(folder, "model.safetensors")) == 0o666 & ~umask
    torch.testing.assert_close(timm_reid.load_backbone(path).layer4[0].bn1.gate, model.layer4[0].bn1.gate)


def test_generated_data_folders_follow_the_umask(tmp_path, umask):
    generate_synthetic(tmp_path / "data", SyntheticConfig(seed=1, **TINY_DATA))
    assert _mode(tmp_path / "data") == 0o777 & ~umask
    generate_video(tmp_path / "video", num_videos=2, num_frames=3, people_per_frame=2.0, track_length=(2, 3))
    assert _mode(tmp_path / "video") == 0o777 & ~umask
