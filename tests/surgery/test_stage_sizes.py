"""The regime of the study at 128x64: stage sizes with and without last stride 1."""
import pytest
import timm
import torch

import timm_reid


def stage_sizes(model, stages):
    sizes = []
    hooks = [s.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for s in stages]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 128, 64))
    for h in hooks:
        h.remove()
    return sizes


@pytest.mark.parametrize("name, stages", [("convnext_atto", lambda m: list(m.stages)),
                                          ("resnet10t", lambda m: [m.layer1, m.layer2, m.layer3, m.layer4])])
def test_last_stride_1_at_128x64_gives_stage_4_8x4(name, stages):
    plain = timm.create_model(name, num_classes=0)
    assert stage_sizes(plain, stages(plain)) == [(32, 16), (16, 8), (8, 4), (4, 2)]
    model = timm.create_model(name, num_classes=0)
    timm_reid.patch(model, aibn=[3, 4], last_stride=1)
    # AIBN's instance statistics in stages 3-4 then come from 8 x 4 = 32 positions
    assert stage_sizes(model, stages(model)) == [(32, 16), (16, 8), (8, 4), (8, 4)]
