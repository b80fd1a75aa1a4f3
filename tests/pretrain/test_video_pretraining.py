"""ISR and MoCo end to end on tiny video crops: no label read, backbone usable, resume exact."""
import json

import pytest
import torch
from safetensors.torch import load_file

import timm_reid
from timm_reid.data import video
from timm_reid.pretrain import pretrain
from timm_reid.pretrain.__main__ import cli

from .conftest import TINY_MODEL

TINY_VIDEO = ["--batch-size", "12", "--visits-per-epoch", "2", "--queue-size", "32"]
TINY_METHOD = {"isr": ["--hard-negatives", "4"], "moco": []}  # each method takes only its own flags


def _argv(method, output, data, *extra):
    return ["--method", method, "--output", str(output), "--data", str(data), "--epochs", "2",
            *TINY_VIDEO, *TINY_METHOD[method], *TINY_MODEL, *extra]


@pytest.fixture
def no_labels(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training read the track labels")

    monkeypatch.setattr(video, "read_tracks", refuse)


@pytest.mark.parametrize("method", ["isr", "moco"])
def test_pretraining_on_video_crops_without_labels(tmp_path, tiny_video_root, no_labels, method):
    root, _ = tiny_video_root
    assert cli(_argv(method, tmp_path / "run", root)) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(r["steps"] >= 1 for r in lines)
    key = "reliability" if method == "isr" else "instance_accuracy"
    assert all(0.0 <= r[key] <= 1.0 for r in lines)
    if method == "isr":
        assert lines[0]["pairs"] > 0
    model = timm_reid.load_backbone(str(tmp_path / "run"))
    assert model.timm_reid_backbone["extra"]["method"] == method
    assert not any(k.startswith("key.") for k in load_file(tmp_path / "run" / "backbone.safetensors"))
    # The file starts a patched model, as train --checkpoint-path does.
    patched = timm_reid.create_model("test_convnext", aibn=[3, 4], tnorm=[1], num_cameras=2, num_classes=0,
                                     checkpoint_path=str(tmp_path / "run" / "backbone.safetensors"))
    stem = {k: v for k, v in model.state_dict().items() if k.startswith("stem.")}
    for k, v in stem.items():
        torch.testing.assert_close(patched.state_dict()[k], v)


def test_isr_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_video_root, monkeypatch):
    from timm_reid.pretrain import engine

    root, _ = tiny_video_root
    assert cli(_argv("isr", tmp_path / "full", root)) == 0
    real_save = engine.atomic_save

    def interrupt(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "atomic_save", interrupt)
    assert cli(_argv("isr", tmp_path / "cut", root)) == 130
    monkeypatch.setattr(engine, "atomic_save", real_save)
    state = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["task"]["queue"]["count"] > 0
    assert cli(["--resume", str(tmp_path / "cut"), "--no-progress", "--threads", "1"]) == 0
    a = load_file(tmp_path / "full" / "backbone.safetensors")
    b = load_file(tmp_path / "cut" / "backbone.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_isr_from_python_patched_with_tnorm_per_video(tmp_path, tiny_video_root):
    root, _ = tiny_video_root
    result = pretrain("isr", output=tmp_path / "run", data=str(root), epochs=1, model="test_convnext",
                      aibn=[3, 4], tnorm=[1], aibn_gate_init=0.0, batch_size=12, visits_per_epoch=1,
                      queue_size=16, threads=1, no_progress=True)
    assert result["final"] == {"videos": 3, "crops": len(video.load_video_crops(root).crops)}
    model = timm_reid.load_backbone(str(tmp_path / "run"))
    assert model.timm_reid_backbone["patch"]["num_cameras"] == 3  # one camera per video
    with pytest.raises(ValueError, match="unknown pretraining option"):
        pretrain("isr", output=tmp_path / "x", epoch=1)


def test_moco_key_encoder_is_the_momentum_average(tiny_video_root):
    from timm_reid.pretrain.video_tasks import MoCoTask, video_transform

    root, _ = tiny_video_root
    backbone = timm_reid.create_model("test_convnext", num_classes=0)
    task = MoCoTask(backbone, video.load_video_crops(root), tau=0.2, queue_size=8, momentum=0.9,
                    transform=video_transform(64, 32, color_jitter=0.2), frames_per_video=2, delta_max=2,
                    batch_size=8, visits=1, seed=0, workers=0, device="cpu")
    key_before = [p.clone() for p in task.modules["key"].parameters()]
    with torch.no_grad():
        for p in task.modules["backbone"].parameters():
            p.add_(1.0)
    task.after_step()
    for k0, k1, q in zip(key_before, task.modules["key"].parameters(), task.modules["backbone"].parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)
    assert not any(p.requires_grad for p in task.modules["key"].parameters())
