"""No camera id is lost silently: training without ids, threads, nn.DataParallel replicas."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import timm_reid
from tests.surgery.surgery_cases import fresh
from tests.surgery.surgery_cases import images as surgery_images
from timm_reid.layers import TNorm, cameras


class Net(nn.Module):
    """A TNorm between two convolutions, wired to one shared context as surgery wires a model."""

    def __init__(self, num_cameras: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tnorm = TNorm(4, num_cameras)
        self.tnorm.name = "net.tnorm"
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.tnorm(self.conv(x)))


def images(n=4, seed=0):
    return torch.randn(n, 3, 6, 4, generator=torch.Generator().manual_seed(seed))


def test_training_without_camera_ids_names_the_layer_and_both_ways():
    layer = TNorm(4, 3).train()
    layer.name = "stages.2.tnorm"
    with pytest.raises(ValueError) as info:
        layer(torch.randn(2, 4, 3, 3))
    message = str(info.value)
    assert "TNorm(4, num_cameras=3, mode='transform') at stages.2.tnorm" in message
    assert "model(x, camids=camids)" in message and "with timm_reid.cameras(camids)" in message
    assert "timm_reid.cameras(record=False)" in message and "thread" in message


def test_explicit_identity_pass_records_nothing():
    layer = TNorm(4, 3).train()
    x = torch.randn(2, 4, 3, 3)
    with timm_reid.cameras(record=False):
        assert layer(x) is x
    assert torch.equal(layer.running_mean, torch.zeros(3, 4)) and torch.equal(layer.running_var, torch.ones(3, 4))
    with cameras(record=False, convert=True):  # conversion without ids stays what it was: batch sources
        assert layer(x).shape == x.shape
    with pytest.raises(ValueError, match="record=False is the explicit way"):
        with cameras([0, 1], record=False):
            pass
    with pytest.raises(TypeError, match="record must be True or False"):
        with cameras(record="no"):
            pass


def test_camera_block_does_not_reach_other_threads_and_the_error_says_so():
    net = Net().train()
    errors = []

    def worker():
        try:
            net(images())
        except ValueError as e:
            errors.append(str(e))

    with timm_reid.cameras(torch.tensor([0, 1, 2, 0])):
        net(images())  # same thread: fine
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "holds for the thread that entered it only" in errors[0]


def _replicate(module: nn.Module) -> nn.Module:
    """What nn.parallel.replicate does on one device, without devices: the same parameters."""
    replica = module._replicate_for_data_parallel()
    replica._parameters = dict(module._parameters)
    replica._modules = {name: _replicate(child) for name, child in module._modules.items()}
    return replica


def test_data_parallel_replicas_running_concurrently_are_refused_not_mixed_up():
    """nn.DataParallel replicas of a patched model share its camera context; run concurrently, as
    DataParallel runs them (one thread each, `camids` scattered with the batch), each must fail
    loudly instead of returning an output computed with another replica's camera ids."""
    model = timm_reid.patch(fresh("resnet"), tnorm=[2], num_cameras=3).train()
    replicas = [_replicate(model) for _ in range(4)]
    barrier = threading.Barrier(len(replicas))
    outcomes = [None] * len(replicas)

    def run(i):
        barrier.wait()
        try:
            outcomes[i] = replicas[i](surgery_images(2, seed=i), camids=torch.full((2,), i % 3))
        except RuntimeError as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    message = str(outcomes[0])
    assert "nn.DataParallel is not supported" in message and "DistributedDataParallel" in message
    assert "layer2.tnorm" in message
    # the model itself (and a single-device DataParallel, which does not replicate) still works
    assert torch.isfinite(model(surgery_images(2), camids=torch.tensor([0, 1]))).all()
    assert torch.isfinite(nn.DataParallel(model)(surgery_images(2), camids=torch.tensor([0, 1]))).all()
