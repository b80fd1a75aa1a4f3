"""AIBN forward+backward vs nn.BatchNorm2d vs the naive autograd composition of its formula.

Prints JSON lines: median / p20 / p80 time of one training step of the layer (forward and
backward with a fixed grad_output) and the activation memory each keeps for backward (bytes of
the distinct storages autograd saves, the layer input included, measured with saved_tensors_hooks), at two shapes
of 256x128 inputs, batch 64: ResNet layer3 (64, 1024, 16, 8) NCHW and a ConvNeXt stage-3 block (64, 16, 8, 384) NHWC.

    python benchmarks/layers.py [--reps 15] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, time_interleaved  # noqa: E402

from timm_reid.layers import AIBN, functional as F  # noqa: E402

SHAPES = {
    "resnet_layer3_nchw": ((64, 1024, 16, 8), False),
    "convnext_stage3_nhwc": ((64, 16, 8, 384), True),
}


def candidates(shape, channels_last):
    channels = shape[3] if channels_last else shape[1]
    bn = nn.BatchNorm2d(channels).train()
    aibn = AIBN(channels, channels_last=channels_last).train()
    ref = AIBN(channels, channels_last=channels_last).train()

    def batchnorm(x):
        # BatchNorm2d wants NCHW; an NHWC tensor is an NCHW channels_last view of the same memory.
        return bn(x.permute(0, 3, 1, 2) if channels_last else x)

    def naive(x):
        return F.aibn(x, ref.weight, ref.bias, ref.gate, ref.running_mean, ref.running_var, training=True, channels_last=channels_last)

    return {"batchnorm2d": batchnorm, "aibn": aibn, "naive_autograd": naive}


def step(layer, x, dy):
    x.grad = None
    y = layer(x)
    y.backward(dy.view_as(y) if y.shape == dy.shape else dy.permute(0, 3, 1, 2))


def saved_bytes(layer, x, dy) -> int:
    """Bytes of the distinct tensors autograd keeps between forward and backward."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.backward(dy if y.shape == dy.shape else dy.permute(0, 3, 1, 2))
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, (shape, channels_last) in SHAPES.items():
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        layers = candidates(shape, channels_last)
        timings = time_interleaved({k: (lambda l=l: step(l, x, dy)) for k, l in layers.items()}, args.reps)
        memory = {k: saved_bytes(l, x, dy) for k, l in layers.items()}
        for k in layers:
            emit({"bench": "layers", "shape": name, "dims": list(shape), "impl": k, **timings[k], "saved_bytes": memory[k]})
        base, ours, naive = timings["batchnorm2d"]["median_ms"], timings["aibn"]["median_ms"], timings["naive_autograd"]["median_ms"]
        emit({
            "bench": "layers", "shape": name, "summary": True,
            "aibn_over_batchnorm_time": ours / base, "naive_over_aibn_time": naive / ours,
            "aibn_over_batchnorm_saved_bytes": memory["aibn"] / max(memory["batchnorm2d"], 1),
            "input_bytes": x.numel() * x.element_size(),
        })


if __name__ == "__main__":
    main()
