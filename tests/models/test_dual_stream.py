"""Dual-stream backbones: each modality's layers see only its images; shared layers all."""
import pytest
import torch

import timm_reid
from timm_reid.backbone import read_backbone_metadata
from timm_reid.layers import TNorm
from timm_reid.models import ModalityRouted, dual_stream

from ..surgery.surgery_cases import INPUT, fresh

FAMILIES = ["convnext-nchw", "resnet", "tv-resnet", "tv-convnext"]
INFRARED = [2, 3]           # cameras 2 and 3 infrared, 0 and 1 visible
CAMIDS = torch.tensor([0, 2, 1, 3, 3, 0])


def perturb_infrared(model):
    """Make the infrared copies differ from the visible ones (a fresh split starts equal)."""
    with torch.no_grad():
        for routed in (m for m in model.modules() if isinstance(m, ModalityRouted)):
            for p in routed.streams[1].parameters():
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("name", FAMILIES)
def test_split_starts_equal_and_routes_each_sample_to_its_modality(name):
    torch.manual_seed(0)
    plain = fresh(name).eval()
    model = dual_stream(fresh(name), INFRARED, num_cameras=4).eval()
    x = torch.randn(len(CAMIDS), *INPUT)
    with torch.no_grad():
        torch.testing.assert_close(model(x, camids=CAMIDS), plain(x))   # both copies start equal
        perturb_infrared(model)
        mixed = model(x, camids=CAMIDS)
        # eval: every row is independent, so the mixed batch equals each modality run alone
        visible, infrared = CAMIDS < 2, CAMIDS >= 2
        torch.testing.assert_close(mixed[visible], model(x[visible], camids=CAMIDS[visible]))
        torch.testing.assert_close(mixed[infrared], model(x[infrared], camids=CAMIDS[infrared]))
        assert not torch.allclose(mixed[infrared], plain(x)[infrared])
        torch.testing.assert_close(mixed[visible], plain(x)[visible])  # visible copies untouched


@pytest.mark.parametrize("specific_stages", [0, 1])
def test_modality_layers_get_only_their_modality_and_their_gradients(specific_stages):
    model = dual_stream(fresh("resnet"), INFRARED, num_cameras=4, specific_stages=specific_stages).train()
    routed = [m for m in model.modules() if isinstance(m, ModalityRouted)]
    assert len(routed) == 4 + specific_stages      # conv1, bn1, act1, maxpool (+ layer1)
    seen = {0: [], 1: []}
    for r in routed[:1]:
        for m, stream in enumerate(r.streams):
            stream.register_forward_hook(lambda mod, inp, out, m=m: seen[m].append(inp[0].shape[0]))
    x = torch.randn(len(CAMIDS), *INPUT)
    model(x, camids=CAMIDS).sum().backward()
    assert seen == {0: [2 + 1], 1: [3]}
    # a visible-only batch leaves the infrared copies without gradient
    model.zero_grad(set_to_none=True)
    model(x[:1], camids=CAMIDS[:1]).sum().backward()
    for r in routed:
        assert all(p.grad is None for p in r.streams[1].parameters())
    assert all(p.grad is not None for p in routed[0].streams[0].parameters())
    assert model.layer4[0].conv1.weight.grad is not None       # shared deep layers


def test_patched_model_keeps_one_camera_context():
    model = fresh("resnet")
    timm_reid.patch(model, aibn=[1, 3], tnorm=[1], num_cameras=4, tnorm_mode="normalize", entry="replace")
    dual_stream(model, INFRARED, num_cameras=4, specific_stages=1).train()
    tnorms = [m for m in model.modules() if isinstance(m, TNorm)]
    assert len(tnorms) == 2                                   # the stage-1 TNorm, once per stream
    assert all(t.context is model.timm_reid_cameras for t in tnorms)
    out = model(torch.randn(len(CAMIDS), *INPUT), camids=CAMIDS)
    assert torch.isfinite(out).all()
    # each stream's TNorm recorded only its own cameras' statistics
    visible_tnorm, infrared_tnorm = tnorms
    assert torch.equal(visible_tnorm.running_mean[2:], torch.zeros_like(visible_tnorm.running_mean[2:]))
    assert torch.equal(infrared_tnorm.running_mean[:2], torch.zeros_like(infrared_tnorm.running_mean[:2]))
    assert not torch.equal(infrared_tnorm.running_mean[2:], torch.zeros_like(infrared_tnorm.running_mean[2:]))


def test_camera_ids_are_required_and_checked():
    model = dual_stream(fresh("resnet"), INFRARED, num_cameras=4)
    x = torch.randn(2, *INPUT)
    with pytest.raises(ValueError, match="conv1: a dual-stream model needs each sample's camera id"):
        model(x)
    with pytest.raises(ValueError, match=r"camera ids must lie in 0..3"):
        model(x, camids=torch.tensor([0, 4]))
    with timm_reid.cameras(torch.tensor([0, 2])):
        assert model(x).shape[0] == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one camera id"):
        dual_stream(fresh("resnet"), [])
    with pytest.raises(ValueError, match="specific_stages must be 0..3"):
        dual_stream(fresh("resnet"), INFRARED, specific_stages=4)
    with pytest.raises(ValueError, match="too small"):
        dual_stream(fresh("resnet"), INFRARED, num_cameras=3)
    model = dual_stream(fresh("resnet"), INFRARED)
    with pytest.raises(ValueError, match="already dual-stream"):
        dual_stream(model, INFRARED)
    for name in ("features-resnet", "features-convnext"):   # features_only wrappers split too
        routed = [m for m in dual_stream(fresh(name), INFRARED).modules() if isinstance(m, ModalityRouted)]
        assert routed and routed[0].path in ("conv1", "stem_0")


@pytest.mark.parametrize("specific_stages", [0, 1])
def test_backbone_file_records_the_split_and_reloads_it(tmp_path, specific_stages):
    torch.manual_seed(0)
    model = timm_reid.create_model("test_convnext", aibn=[2], num_classes=0)
    dual_stream(model, [3], num_cameras=5, specific_stages=specific_stages)
    perturb_infrared(model)
    model.eval()
    path = timm_reid.save_backbone(model, str(tmp_path / "b.safetensors"), model_name="test_convnext",
                                   input_size=(64, 32))
    record = read_backbone_metadata(path)
    assert record["dual_stream"] == {"infrared_cameras": [3], "num_cameras": 5, "specific_stages": specific_stages}
    loaded = timm_reid.load_backbone(path)
    assert [m.path for m in loaded.modules() if isinstance(m, ModalityRouted)] == \
        [m.path for m in model.modules() if isinstance(m, ModalityRouted)]
    x, camids = torch.randn(4, 3, 64, 32), torch.tensor([0, 3, 4, 3])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, camids=camids), model(x, camids=camids))


def test_backbone_record_with_a_bad_split_is_refused(tmp_path):
    from timm_reid._records import check_record

    model = timm_reid.create_model("test_convnext", num_classes=0)
    path = timm_reid.save_backbone(model, str(tmp_path / "b.safetensors"), model_name="test_convnext",
                                   input_size=(64, 32))
    record = read_backbone_metadata(path)
    assert "dual_stream" not in record  # a single-stream model records no split
    with pytest.raises(ValueError, match="dual_stream .* must be an object with infrared_cameras"):
        check_record({**record, "dual_stream": {"infrared_cameras": [5], "num_cameras": 2, "specific_stages": 0}},
                     path)
