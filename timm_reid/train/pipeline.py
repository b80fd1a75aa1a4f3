"""Reference pipeline: rounds of the intra-camera and inter-camera stages, with evaluation.

Read top to bottom: :func:`main` sets up the run directory, data and model, evaluates the
untrained model, runs the rounds (checkpointing after every stage), evaluates the final model,
writes ``final_metrics.json`` and the plots, and prints a summary table.

The final model is the one reported; test-set metrics are computed for the curves only and never
select a checkpoint.
"""

import logging
import os
import sys
import time

import numpy as np
import torch

from timm_reid.train import engine
from timm_reid.train.checkpoint import (atomic_save, load_checkpoint, seed_everything, stage_seed, write_json,
                                        write_jsonl)
from timm_reid.train.config import check_args, parse_args, save_config
from timm_reid.train.diagnostics import same_camera_top1
from timm_reid.train.model import ReIDNet

log = logging.getLogger("timm_reid.train")


def main(args):
    """Run (or resume) a training run; returns the final metrics dict (also in final_metrics.json)."""
    args, state = resume_state(args)
    check_args(args)
    run_dir = prepare_run_dir(args, resuming=state is not None)
    handler = setup_logging(run_dir)
    try:
        return _run(args, state, run_dir)
    finally:
        log.removeHandler(handler)
        handler.close()


def resume_state(args):
    """With ``--resume RUN_DIR``: the stored options (threads/workers/progress from the command line)
    and the last checkpoint; otherwise ``(args, None)``."""
    if args.resume is None:
        return args, None
    path = os.path.join(args.resume, "last.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {args.resume}: no last.pth there; is it a run directory?")
    state = load_checkpoint(path)
    stored = type(args)(**{**vars(args), **state["args"]})  # options added since the checkpoint: defaults
    for key in ("threads", "workers", "no_progress", "no_plots", "device"):
        setattr(stored, key, getattr(args, key))
    stored.resume, stored.output = args.resume, args.resume
    return stored, state


def prepare_run_dir(args, *, resuming):
    if args.output is None:
        args.output = os.path.join("runs", f"{args.preset}-seed{args.seed}")
    if not resuming and os.path.isfile(os.path.join(args.output, "last.pth")):
        raise FileExistsError(f"{args.output} already holds a run; continue it with --resume {args.output} "
                              "or choose another --output")
    os.makedirs(args.output, exist_ok=True)
    if not resuming:
        save_config(args, os.path.join(args.output, "config.yaml"))
    return args.output


def setup_logging(run_dir):
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(os.path.join(run_dir, "log.txt"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        log.addHandler(logging.StreamHandler(sys.stdout))
    return handler


def _run(args, state, run_dir):
    start = time.time()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    seed_everything(args.seed)
    dataset = load_data(dataset=args.dataset, root=args.root, run_dir=run_dir, seed=args.seed,
                        num_identities=args.synthetic_identities, num_test_identities=args.synthetic_test_identities,
                        num_cameras=args.synthetic_cameras,
                        style_strength=args.style_strength, height=args.height, width=args.width)
    log.info(dataset.summary() if hasattr(dataset, "summary") else f"dataset {args.dataset}")
    num_cameras = dataset.num_cameras
    train_tf, test_tf = build_transforms(args.height, args.width, pad=args.pad, random_erasing=args.random_erasing)
    net = build_net(model=args.model, aibn=args.aibn, tnorm=args.tnorm, num_cameras=num_cameras,
                    aibn_mix=args.aibn_mix, aibn_gate_init=args.aibn_gate_init, tnorm_mode=args.tnorm_mode,
                    aibn_entry=args.aibn_entry, last_stride=args.last_stride, pretrained=args.pretrained and state is None,
                    checkpoint_path=args.checkpoint_path if state is None else None, device=args.device)
    eval_kw = dict(transform=test_tf, batch_size=args.test_batch_size, workers=args.workers,
                   camera_aggregate=args.camera_aggregate, num_cameras=num_cameras)

    if state is None:
        log.info(f"run directory {run_dir}; evaluating the initial model")
        history, pending, position = [], {}, (0, 0)
        initial = evaluate_splits(net, dataset, **eval_kw)
        log.info(f"initial: {format_metrics(initial['test'])}")
        elapsed = 0.0
    else:
        net.set_heads(state["head_sizes"])
        net.load_state_dict(state["model"])
        history, pending, initial = state["history"], state["pending"], state["initial"]
        position, elapsed = tuple(state["next"]), state["elapsed"]
        log.info(f"resumed {run_dir} at round {position[0] + 1}, stage {args.stages[position[1]]}")

    def checkpoint(next_position, path="last.pth"):
        atomic_save({"args": vars(args), "model": net.state_dict(), "head_sizes": net.head_sizes(),
                     "history": history, "pending": pending, "initial": initial, "next": list(next_position),
                     "elapsed": elapsed + time.time() - start}, os.path.join(run_dir, path))

    try:
        r, s = position
        while r < args.rounds:
            stage = args.stages[s]
            seed_everything(stage_seed(args.seed, r, stage))
            pending.update(run_stage(stage, net, dataset, args=args, round_index=r, num_cameras=num_cameras,
                                     train_tf=train_tf, test_tf=test_tf))
            s += 1
            if s == len(args.stages):
                record = {"round": r + 1, **pending}
                if args.eval_every and (r + 1) % args.eval_every == 0 and r + 1 < args.rounds:
                    record.update(evaluate_splits(net, dataset, **eval_kw))
                log.info(f"round {r + 1}/{args.rounds}: {format_record(record)}")
                history.append(record)
                write_jsonl(history, os.path.join(run_dir, "metrics.jsonl"))
                pending, r, s = {}, r + 1, 0
            checkpoint((r, s))
    except KeyboardInterrupt:
        checkpoint((r, s), path="interrupted.pth")
        log.info(f"interrupted: weights saved to {run_dir}/interrupted.pth; continue with --resume {run_dir} "
                 "(restarts the interrupted stage from last.pth)")
        raise

    final = evaluate_splits(net, dataset, **eval_kw, keep_features=not args.no_plots)
    features = final.pop("_features", None)
    if history:
        history[-1].update({k: v for k, v in final.items()})
        write_jsonl(history, os.path.join(run_dir, "metrics.jsonl"))
    atomic_save({"args": vars(args), "model": net.state_dict(), "head_sizes": net.head_sizes(),
                 "num_cameras": num_cameras}, os.path.join(run_dir, "final.pth"))
    wall = elapsed + time.time() - start
    result = {"initial": summary(initial), "final": summary(final), "rounds": args.rounds,
              "oracle_clusters": bool(args.oracle_clusters), "wall_time_s": round(wall, 1)}
    write_json(result, os.path.join(run_dir, "final_metrics.json"))
    if not args.no_plots:
        write_plots(run_dir, history=history, initial=initial, final=final, features=features)
    log.info(format_table(result))
    return result


# ------------------------------------------------------------------------------------------------ setup

def load_data(*, dataset, root, run_dir, seed, num_identities, num_test_identities, num_cameras, style_strength,
              height, width):
    """The dataset named ``dataset`` in ``root``; without a name, synthetic data generated (once)
    into ``root`` or ``RUN_DIR/data`` with the run's seed."""
    from timm_reid.data import build_dataset

    if dataset is None or dataset == "synthetic":
        return build_dataset("synthetic", root or os.path.join(run_dir, "data"), seed=seed,
                             num_identities=num_identities, num_test_identities=num_test_identities,
                             num_cameras=num_cameras,
                             style_strength=style_strength, image_size=(height, width))
    if root is None:
        raise ValueError(f"--dataset {dataset} needs --root DIR, the folder that holds the dataset")
    return build_dataset(dataset, root)


def build_transforms(height, width, *, pad=10, random_erasing=0.5):
    """(train, test) transforms; training: flip, pad + random crop, random erasing."""
    from timm_reid.data import build_transforms as _build

    return (_build(height, width, train=True, pad=pad, random_erasing_p=random_erasing),
            _build(height, width, train=False))


def build_net(*, model, aibn, tnorm, num_cameras, aibn_mix, aibn_gate_init, tnorm_mode, last_stride, pretrained,
              checkpoint_path, device, aibn_entry="replace"):
    """A timm backbone with pooled output (``num_classes=0``), patched with AIBN/TNorm if asked."""
    from timm_reid.factory import create_model

    backbone = create_model(model, aibn=tuple(aibn), tnorm=tuple(tnorm), num_cameras=num_cameras if tnorm else None,
                            mix=aibn_mix, gate_init=aibn_gate_init, tnorm_mode=tnorm_mode, last_stride=last_stride,
                            entry=aibn_entry, pretrained=pretrained, checkpoint_path=checkpoint_path, num_classes=0)
    return ReIDNet(backbone).to(device)


# ------------------------------------------------------------------------------------------------ stages

def mu_at(round_index, *, mu0, rounds, power):
    """Jaccard weight of round r (0-based): ``mu_0 (1 - r / R) ** power`` (IICS Eq. 5 schedule)."""
    return mu0 * (1.0 - round_index / rounds) ** power


def run_stage(stage, net, dataset, *, args, round_index, num_cameras, train_tf, test_tf):
    common = dict(num_cameras=num_cameras, test_transform=test_tf, train_transform=train_tf,
                  test_batch_size=args.test_batch_size, workers=args.workers, center=args.center_features,
                  drop_singletons=args.drop_singletons, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value,
                  rerank=args.rerank, opt=args.opt, backbone_lr_mult=args.backbone_lr_mult,
                  weight_decay=args.weight_decay, momentum=args.momentum, self_distill=args.self_distill,
                  convert_prob=args.convert_prob, seed=stage_seed(args.seed, round_index, stage),
                  progress=not args.no_progress, head_init=args.head_init,
                  head_temperature=args.head_temperature)
    tag = f"round {round_index + 1}/{args.rounds} {stage}"
    if stage == "intra":
        return engine.run_intra_stage(net, dataset.train, n_clusters=args.intra_clusters,
                                      threshold_quantile=args.intra_threshold_quantile, epochs=args.intra_epochs,
                                      batch_size=args.intra_batch_size, joint_forward=args.intra_joint_forward,
                                      lr=args.lr, desc=tag, **common)
    n_clusters = dataset.num_train_pids if args.oracle_clusters else args.inter_clusters
    return engine.run_inter_stage(net, dataset.train, mu=mu_at(round_index, mu0=args.mu0, rounds=args.rounds,
                                                              power=args.mu_power),
                                  n_clusters=n_clusters, threshold_quantile=args.inter_threshold_quantile, epochs=args.inter_epochs,
                                  batch_size=args.batch_size, num_instances=args.num_instances,
                                  lr=args.lr * args.inter_lr_scale, margin=args.margin,
                                  triplet_weight=args.triplet_weight, desc=tag, **common)


# ------------------------------------------------------------------------------------------------ evaluation

def evaluate_splits(net, dataset, *, keep_features=False, **kw):
    """``{"test": metrics}`` (query vs gallery) plus ``{"val": metrics}`` when the dataset has a
    validation split (evaluated against itself)."""
    out = {}
    if dataset.query and dataset.gallery:
        out["test"] = evaluate_records(net, dataset.query, dataset.gallery, keep_features=keep_features, **kw)
        if keep_features:
            out["_features"] = out["test"].pop("_features")
    if getattr(dataset, "val", None):
        out["val"] = evaluate_records(net, dataset.val, dataset.val, **kw)
    return out


def evaluate_records(net, query, gallery, *, transform, batch_size, workers, camera_aggregate, num_cameras,
                     keep_features=False):
    """mAP, CMC ranks, mINP and the same-camera top-1 share (fractions in [0, 1])."""
    from timm_reid.evaluation import evaluate

    records = list(query) + ([] if gallery is query else list(gallery))
    feats, pids, camids = engine.extract(net, records, transform=transform, batch_size=batch_size,
                                         workers=workers, normalize=True, camera_aggregate=camera_aggregate,
                                         num_cameras=num_cameras)
    nq = len(query)
    qf, qp, qc = feats[:nq], pids[:nq], camids[:nq]
    gf, gp, gc = (qf, qp, qc) if gallery is query else (feats[nq:], pids[nq:], camids[nq:])
    res = evaluate(query_features=torch.as_tensor(qf), gallery_features=torch.as_tensor(gf), q_pids=qp,
                   g_pids=gp, q_camids=qc, g_camids=gc)
    metrics = {k: _plain(v) for k, v in res.items()}
    metrics["same_camera_top1"] = same_camera_top1(qf, gf, qp, gp, qc, gc)
    if keep_features:
        metrics["_features"] = (feats, pids, camids)
    return metrics


def _plain(v):
    if torch.is_tensor(v):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.tolist() if v.ndim else v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def summary(split_metrics):
    keys = ("mAP", "rank1", "rank5", "rank10", "mINP", "same_camera_top1")
    out = {k: split_metrics["test"][k] for k in keys if k in split_metrics.get("test", {})}
    if "val" in split_metrics:
        out["val"] = {k: split_metrics["val"][k] for k in keys if k in split_metrics["val"]}
    return out


# ------------------------------------------------------------------------------------------------ output

def format_metrics(m):
    return " ".join(f"{k}={100 * m[k]:.1f}" for k in ("mAP", "rank1", "same_camera_top1") if k in m)


def format_record(record):
    parts = []
    for k, v in record.items():
        if k in ("round",) or isinstance(v, (dict, list)):
            if k.endswith("_seconds"):
                parts.append(f"{k}=" + "/".join(f"{x:.0f}" for x in v.values()))
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    if "test" in record:
        parts.append("test: " + format_metrics(record["test"]))
    return " ".join(parts)


def format_table(result):
    rows = [("initial", result["initial"]), ("final", result["final"])]
    lines = [f"{'model':<10}{'mAP':>8}{'rank-1':>8}{'same-cam top-1':>16}"]
    for name, m in rows:
        lines.append(f"{name:<10}{100 * m.get('mAP', float('nan')):>7.1f}%{100 * m.get('rank1', float('nan')):>7.1f}%"
                     f"{100 * m.get('same_camera_top1', float('nan')):>15.1f}%")
    note = "  (inter cluster count: ORACLE = true identity count)" if result.get("oracle_clusters") else ""
    return "\n".join(lines) + f"\n{result['rounds']} rounds, {result['wall_time_s']:.0f} s{note}"


def write_plots(run_dir, *, history, initial, final, features):
    try:
        from timm_reid.train import plots
    except ImportError as e:  # matplotlib missing: plots are optional output
        log.info(f"no plots ({e})")
        return
    plots.plot_curves(history, initial, os.path.join(run_dir, "curves.png"))
    if "cmc" in final.get("test", {}):
        plots.plot_cmc(initial["test"].get("cmc"), final["test"]["cmc"], os.path.join(run_dir, "cmc.png"))
    if features is not None:
        plots.plot_embedding(*features, os.path.join(run_dir, "embedding.png"))


def cli(argv=None):
    args = parse_args(argv)
    try:
        main(args)
    except KeyboardInterrupt:
        sys.exit(130)
