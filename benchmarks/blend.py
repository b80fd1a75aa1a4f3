"""Training-step overhead of AIBN entered by blending (``entry="blend"``) on CPU.

One training step (forward, loss, backward) of convnext_atto and resnet18 at 128x64 input, batch
``--batch``: the unpatched model against the same weights patched with AIBN in stages 3 and 4
(``entry="blend"``, the default, at its initial blend weight 0 and at 0.3, and
``entry="replace"`` for reference), timed round-robin in one process (medians). Prints JSON
lines; the summary row has ``blend_over_unpatched_time`` and ``blend_0.3_over_unpatched_time``.

    python benchmarks/blend.py [--reps 15] [--batch 32] [--threads 1] [--clock wall|thread]

``*_paired_ratio``: the median over rounds of the variant's time over the unpatched model's in the
same round (the more robust figure on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, time_interleaved  # noqa: E402

import timm_reid  # noqa: E402
from timm_reid.layers import BlendedAIBN  # noqa: E402

MODELS = ("convnext_atto", "resnet18")


def training_step(model, images):
    def step():
        model.zero_grad(set_to_none=True)
        model(images).float().pow(2).mean().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: this thread's CPU time (for a machine shared with other jobs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 128, 64)
    for name in args.models.split(","):
        base = timm_reid.create_model(name, num_classes=0).train()
        variants = {"unpatched": base}
        for entry in ("blend", "replace"):
            patched = copy.deepcopy(base)
            variants[entry] = timm_reid.patch(patched, aibn=[3, 4], entry=entry).train()
        # A blend that training has moved off 0 (then AIBN's output and input gradient are needed).
        variants["blend_0.3"] = copy.deepcopy(variants["blend"])
        for module in variants["blend_0.3"].modules():
            if isinstance(module, BlendedAIBN):
                module.blend.data.fill_(0.3)
        timings = time_interleaved({k: training_step(m, images) for k, m in variants.items()}, args.reps,
                                   clock=args.clock, baseline="unpatched")
        for k in variants:
            emit({"bench": "blend", "model": name, "variant": k, "batch": args.batch, **timings[k]})
        unpatched = timings["unpatched"]["median_ms"]
        emit({"bench": "blend", "model": name, "summary": True, "batch": args.batch,
              "blend_over_unpatched_time": timings["blend"]["median_ms"] / unpatched,
              "blend_0.3_over_unpatched_time": timings["blend_0.3"]["median_ms"] / unpatched,
              "replace_over_unpatched_time": timings["replace"]["median_ms"] / unpatched,
              **{f"{k}_paired_ratio": timings[k]["median_ratio"] for k in ("blend", "blend_0.3", "replace")}})


if __name__ == "__main__":
    main()
