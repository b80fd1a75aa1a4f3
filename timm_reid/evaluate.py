"""Evaluate a trained checkpoint: ``python -m timm_reid.evaluate --checkpoint RUN/final.pth --data DIR``.

The checkpoint (``final.pth``, ``last.pth`` or ``interrupted.pth`` of a ``timm_reid.train`` run)
carries the options it was trained with, so the model is rebuilt exactly; ``--data`` is the
dataset folder (layout from ``--dataset``, default: the training run's). Prints mAP, CMC ranks,
mINP and the same-camera top-1 share; ``--output FILE`` also writes them as JSON (fractions).

This file is a command-line entry point only: ``timm_reid.evaluate`` (the attribute) is the
evaluation function, so nothing imports this module.
"""

import argparse
import json
import os
import sys


def get_args_parser():
    parser = argparse.ArgumentParser(description="Evaluate a timm_reid.train checkpoint on a re-ID test split",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="final.pth / last.pth of a run")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="dataset folder (None: the training run's --root, or its synthetic data)")
    parser.add_argument("--dataset", default=None,
                        help="layout name (market1501, dukemtmc, msmt17, csv, synthetic); None: the run's")
    parser.add_argument("--camera-aggregate", default=None, action=argparse.BooleanOptionalAction,
                        help="IIDS camera-aggregated test features (None: as trained)")
    parser.add_argument("--batch-size", default=128, type=int, help="feature-extraction batch size")
    parser.add_argument("--workers", default=0, type=int, help="data-loader worker processes")
    parser.add_argument("--threads", default=None, type=int, help="torch CPU threads (None: all cores)")
    parser.add_argument("--output", default=None, metavar="FILE", help="also write the metrics as JSON here")
    return parser


def main(args):
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    import torch

    from timm_reid.train.checkpoint import load_checkpoint
    from timm_reid.train.pipeline import build_net, build_transforms, evaluate_splits, format_metrics, load_data

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    state = load_checkpoint(args.checkpoint)
    if "args" not in state or "model" not in state:
        raise ValueError(f"{args.checkpoint} is not a timm_reid.train checkpoint (no 'args'/'model' entries)")
    train_args = argparse.Namespace(**state["args"])
    name = args.dataset or train_args.dataset
    if name is None or name == "synthetic":
        # The run's synthetic data: regenerated (or reused) from the stored generator options.
        root = args.data or train_args.root or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "data")
    else:
        root = args.data or train_args.root
    dataset = load_data(dataset=name, root=root, run_dir=None, seed=train_args.seed,
                        num_identities=train_args.synthetic_identities,
                        num_test_identities=train_args.synthetic_test_identities,
                        num_cameras=train_args.synthetic_cameras, style_strength=train_args.style_strength,
                        height=train_args.height, width=train_args.width)
    _, test_tf = build_transforms(train_args.height, train_args.width)
    trained_cameras = state.get("num_cameras", dataset.num_cameras)
    net = build_net(model=train_args.model, aibn=train_args.aibn, tnorm=train_args.tnorm,
                    num_cameras=trained_cameras, aibn_mix=train_args.aibn_mix, aibn_gate_init=train_args.aibn_gate_init,
                    tnorm_mode=train_args.tnorm_mode, last_stride=train_args.last_stride, pretrained=False,
                    aibn_entry=getattr(train_args, "aibn_entry", "replace"),
                    checkpoint_path=None, device="cpu")
    net.set_heads(state["head_sizes"])
    net.load_state_dict(state["model"])
    aggregate = train_args.camera_aggregate if args.camera_aggregate is None else args.camera_aggregate
    metrics = evaluate_splits(net, dataset, transform=test_tf, batch_size=args.batch_size, workers=args.workers,
                              camera_aggregate=aggregate, num_cameras=trained_cameras)
    for split, m in metrics.items():
        print(f"{split}: {format_metrics(m)} rank5={100 * m.get('rank5', float('nan')):.1f} "
              f"rank10={100 * m.get('rank10', float('nan')):.1f} mINP={100 * m.get('mINP', float('nan')):.1f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
