"""Patched models under the runtime features people train with: gradient checkpointing, autocast,
channels_last, DDP, torch.compile. Small models and 64x32 inputs keep these quick on CPU."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.surgery.surgery_cases import fresh, images, randomize_norm_state
from timm_reid.layers import AIBN, TNorm
from timm_reid.surgery import patch

CAMIDS = torch.tensor([0, 1, 1, 2])
TARGETS = torch.tensor([2, 0, 2, 1])
PATCH = dict(aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=3)


def patched(name: str) -> torch.nn.Module:
    return patch(randomize_norm_state(fresh(name)), **PATCH)


def running_stats(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("name", ["convnext-nhwc", "resnet"])
def test_checkpoint_recomputation_does_not_update_running_stats_twice(name):
    base = patched(name).train()
    plain, checkpointed = copy.deepcopy(base), copy.deepcopy(base)
    checkpointed.set_grad_checkpointing()
    calls = []  # proves the recomputation really ran: the block AIBN is called twice
    block_aibn = next(m for p, m in checkpointed.named_modules() if isinstance(m, AIBN) and "downsample" not in p)
    block_aibn.register_forward_hook(lambda *args: calls.append(1))
    for model in (plain, checkpointed):
        model(images(), camids=CAMIDS).pow(2).sum().backward()
    assert len(calls) == 2
    # Only AIBN/TNorm are guarded; a plain BatchNorm in a checkpointed stage does update twice.
    ours = [p for p, m in base.named_modules() if isinstance(m, (AIBN, TNorm))]
    before, after, expected = (
        {k: v for k, v in running_stats(m).items() if k.rsplit(".", 1)[0] in ours} for m in (base, checkpointed, plain)
    )
    assert any(not torch.equal(before[k], expected[k]) for k in before if ".tnorm." in k)
    for key in expected:
        torch.testing.assert_close(after[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    for (path, p), q in zip(checkpointed.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=path)


@pytest.mark.parametrize(
    "tnorm_mode, convert", [("transform", True), ("normalize", False)], ids=["convert", "normalize"]
)
def test_camera_dependent_tnorm_with_gradient_checkpointing_is_a_clear_error(tnorm_mode, convert):
    """The recomputation in backward runs after the camera context is cleared: refuse up front."""
    model = patch(fresh("resnet"), tnorm=[2], num_cameras=3, tnorm_mode=tnorm_mode).train()
    model(images(), camids=CAMIDS, convert=convert).sum().backward()  # fine without checkpointing
    model.set_grad_checkpointing()
    with pytest.raises(ValueError, match="cannot be combined with gradient checkpointing.*set_grad_checkpointing"):
        model(images(), camids=CAMIDS, convert=convert)
    with torch.no_grad():  # nothing is recomputed without a backward: allowed
        model(images(), camids=CAMIDS, convert=convert)


# --------------------------------------------------------------------------- autocast, channels_last


@pytest.mark.parametrize("name", ["convnext-nhwc", "resnet"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_autocast_bf16_on_cpu(name, train):
    model = patched(name).train(train)
    reference = copy.deepcopy(model)
    dtypes = []  # (input, output) dtypes seen by the AIBN layers
    for module in model.modules():
        if isinstance(module, AIBN):
            module.register_forward_hook(lambda m, args, out: dtypes.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(), camids=CAMIDS, convert=True, targets=TARGETS)
    expected = reference(images(), camids=CAMIDS, convert=True, targets=TARGETS)
    assert (torch.bfloat16, torch.bfloat16) in dtypes  # bf16 conv outputs reach AIBN and stay bf16
    assert torch.isfinite(out.float()).all()
    if train:
        out.float().pow(2).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # bf16 activations through several stages: a loose check that it is the same network
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), expected.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("name", ["convnext-nhwc", "convnext-nchw", "resnet"])
def test_channels_last_memory_format_gives_the_same_outputs(name):
    model = patched(name).eval()
    x = images()
    with torch.no_grad():
        expected = model(x, camids=CAMIDS, convert=True, targets=TARGETS)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last), camids=CAMIDS, convert=True, targets=TARGETS)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- DDP


def test_ddp_wrapper_forwards_camids_to_the_patched_model(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = patched("resnet").train()
        reference = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        ddp(images(), camids=torch.tensor([2, 2, 0, 0])).pow(2).sum().backward()
        reference(images(), camids=torch.tensor([2, 2, 0, 0]))
    finally:
        dist.destroy_process_group()
    tnorm = model.layer1.tnorm
    assert (tnorm.running_mean.abs().sum(dim=1) > 0).tolist() == [True, False, True]
    torch.testing.assert_close(tnorm.running_mean, reference.layer1.tnorm.running_mean)


# --------------------------------------------------------------------------- torch.compile


def test_torch_compile_of_a_patched_model_matches_eager():
    """The tiny isotropic ConvNeXt: inductor for eval with TNorm conversion; a training step
    through dynamo + AOT autograd (aot_eager: the same graph capture, without inductor's slow
    CPU code generation)."""
    torch._dynamo.reset()
    model = patched("convnext-iso").eval()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(x, camids=CAMIDS, convert=True, targets=TARGETS),
            eager(x, camids=CAMIDS, convert=True, targets=TARGETS), atol=1e-5, rtol=1e-5,
        )
    model.train(), eager.train()
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x, camids=CAMIDS).pow(2).sum().backward()
    eager(x, camids=CAMIDS).pow(2).sum().backward()
    for (path, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=path)
    for key, value in running_stats(eager).items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)
