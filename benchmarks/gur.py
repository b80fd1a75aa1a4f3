"""GUR measures on the synthetic visible-infrared data: the method's demo, its ablation and ICE,
all scored with the SYSU-MM01 protocol (all-search and indoor-search, single-shot, 10 trials).

Each run trains in this process through the harness pieces (``pipeline.build_context``, the
method's ``Trainer``; the same code ``python -m timm_reid.train`` runs) and scores the network with
:func:`timm_reid.evaluation.evaluate_sysumm01` before training and after every epoch, so that ICE
(whose own harness evaluation is the Market-1501 protocol) is scored exactly like GUR. The data is
``python -m timm_reid.data.synthetic --out DATA --seed S --modality vi`` with the run's seed.
Rows (one per run, JSON) go to ``RESULTS/runs.jsonl``; a run already there is skipped.

    OMP_NUM_THREADS=1 python benchmarks/gur.py --variants ice gur --seeds 0
    python benchmarks/gur.py --report          # the table of runs.jsonl, paired deltas

Variants: ``gur`` (the ``gur-demo`` preset: BD + CAE + CLU), ``baseline`` (ADC only:
``--no-bottom-up --no-cae --clu-epochs 0``), ``bd`` (+ BD), ``bd-cae`` (+ BD + CAE),
``ice`` (the ``ice-demo`` preset on the same data).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "results", "gur")
DEFAULT_DATA = os.path.join("runs", "gur-bench-data")

VARIANTS = {
    "gur": ("gur", "gur-demo", []),
    "baseline": ("gur", "gur-demo", ["--no-bottom-up", "--no-cae", "--clu-epochs", "0", "--clu-smooth-epochs", "0"]),
    "bd": ("gur", "gur-demo", ["--no-cae", "--clu-epochs", "0", "--clu-smooth-epochs", "0"]),
    "bd-cae": ("gur", "gur-demo", ["--clu-epochs", "0", "--clu-smooth-epochs", "0"]),
    "ice": ("ice", "ice-demo", []),
}
# The same variants from the ISR starting point (--init isr), as "<variant>@isr".
VARIANTS.update({f"{k}@isr": (m, p, [*e, "--init", "isr"]) for k, (m, p, e) in list(VARIANTS.items())})


def data_dir(root, seed, infrared_from_visible=0.0):
    from timm_reid.data.synthetic import generate_synthetic_vi

    path = os.path.join(root, f"vi-seed{seed}" + (f"-ir{infrared_from_visible:g}" if infrared_from_visible else ""))
    if not os.path.isfile(os.path.join(path, "meta.json")):
        generate_synthetic_vi(path, seed=seed, infrared_from_visible=infrared_from_visible)
    return path


def build_args(method, preset, extra, data, seed):
    from timm_reid.train import parse_args

    argv = ["--method", method, "--preset", preset, "--dataset", "sysumm01", "--root", data, "--seed", str(seed),
            "--threads", "1", "--no-progress", *extra]
    return parse_args(argv), argv


def sysu_scores(net, ctx):
    import torch

    from timm_reid.evaluation import evaluate
    from timm_reid.evaluation.visible_infrared import evaluate_sysumm01
    from timm_reid.train.features import extract

    d = ctx.dataset
    feats, _, _ = extract(net, list(d.query) + list(d.gallery), transform=ctx.test_tf,
                          batch_size=ctx.test_batch_size, workers=0)
    out = {}
    for mode in ("all", "indoor"):
        r = evaluate_sysumm01(feats[:len(d.query)], feats[len(d.query):], d.query, d.gallery, mode=mode)
        out[mode] = {k: r[k] for k in ("mAP", "rank1", "mINP")}
    # diagnostic: visible-to-visible retrieval within the gallery pool (other cameras only), to tell a
    # network that learns nothing from one that learns within a modality but does not bridge them
    g = torch.as_tensor(feats[len(d.query):])
    pids, cams = (torch.as_tensor([getattr(r, k) for r in d.gallery]) for k in ("pid", "camid"))
    r = evaluate(query_features=g, gallery_features=g, q_pids=pids, g_pids=pids, q_camids=cams, g_camids=cams)
    out["visible_to_visible"] = {"mAP": float(r["mAP"]), "rank1": float(r["rank1"])}
    return out


def run_one(variant, seed, data_root, run_root, more=(), infrared_from_visible=0.0):
    import torch

    from timm_reid.train.checkpoint import seed_everything
    from timm_reid.train.methods import get_method
    from timm_reid.train.pipeline import build_context

    method, preset, extra = VARIANTS[variant]
    data = data_dir(data_root, seed, infrared_from_visible)
    args, argv = build_args(method, preset, [*extra, *more], data, seed)
    module = get_method(method)
    module.check(args)
    if args.init:  # as pipeline.main: the cached starting point (made once into --init-cache)
        from timm_reid.distributed import LOCAL
        from timm_reid.train.starting_points import resolve_init

        args.checkpoint_path = resolve_init(args, LOCAL)
    torch.set_num_threads(1)
    seed_everything(args.seed)
    ctx = build_context(args, os.path.join(run_root, f"{variant}-seed{seed}" + (f"-ir{infrared_from_visible:g}" if infrared_from_visible else "")),
                        fresh=True)
    module.check_data(args, ctx.dataset)
    start = time.time()
    trainer = module.Trainer(ctx, args)
    initial = sysu_scores(trainer.net, ctx)
    curve, position, train_time = [], trainer.start(), 0.0
    while not trainer.done(position):
        seed_everything(trainer.step_seed(position))
        t = time.time()
        record, position, finished = trainer.step(position)
        train_time += time.time() - t
        scores = sysu_scores(trainer.net, ctx)
        curve.append({"epoch": finished, "all": scores["all"], **{k: v for k, v in record.items()
                                                                   if not isinstance(v, dict)}})
        print(f"{variant} seed {seed} epoch {finished}: all-search mAP {100 * scores['all']['mAP']:.1f} "
              f"rank-1 {100 * scores['all']['rank1']:.1f}, visible-to-visible mAP "
              f"{100 * scores['visible_to_visible']['mAP']:.1f} ({train_time:.0f} s training)", flush=True)
        print("  " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                              if k.endswith(("clusters", "ari", "share", "loss", "labelled", "skipped"))), flush=True)
    final = curve[-1] if curve else {"all": initial["all"]}
    final_scores = sysu_scores(trainer.net, ctx)
    return {"variant": variant, "seed": seed, "method": method, "preset": preset,
            "command": "python -m timm_reid.train " + " ".join(argv), "protocol": "sysumm01-all-single-shot",
            "infrared_from_visible": infrared_from_visible, "initial": initial, "final": final_scores, "train_seconds": round(train_time, 1),
            "wall_seconds": round(time.time() - start, 1), "curve": curve,
            "final_epoch_all": final["all"]}


def report(results):
    rows = [json.loads(line) for line in open(os.path.join(results, "runs.jsonl"))]
    by = {(r["variant"], r["seed"]): r for r in rows}
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = ["| variant | seed | all mAP start -> end | all rank-1 | indoor mAP | visible-to-visible mAP | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["variant"], r["seed"])):
        f, i = r["final"], r["initial"]
        v2v = (f"{pct(i['visible_to_visible']['mAP'])} -> {pct(f['visible_to_visible']['mAP'])}"
               if "visible_to_visible" in f and "visible_to_visible" in i else "-")
        lines.append(f"| {r['variant']} | {r['seed']} | {pct(i['all']['mAP'])} -> {pct(f['all']['mAP'])} "
                     f"| {pct(f['all']['rank1'])} | {pct(f['indoor']['mAP'])} | {v2v} | {r['train_seconds']:.0f} |")
    lines += ["", "Paired deltas (all-search mAP points, same seed):", ""]
    for init in ("", "@isr"):
        for a, b in (("bd", "baseline"), ("bd-cae", "bd"), ("gur", "bd-cae"), ("gur", "baseline"), ("gur", "ice")):
            a_, b_ = a + init, b + init
            pairs = sorted((s, by[(a_, s)], by[(b_, s)]) for (v, s) in by if v == a_ and (b_, s) in by)
            if pairs:
                deltas = ", ".join(f"seed {s}: {100 * (x['final']['all']['mAP'] - y['final']['all']['mAP']):+.1f}"
                                   for s, x, y in pairs)
                lines.append(f"- {a_} - {b_}: {deltas}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(results, "tables.md"), "w") as f:
        f.write(text)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["ice", "gur"], choices=tuple(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--results", default=DEFAULT_RESULTS)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--runs", default=os.path.join("runs", "gur-bench"))
    p.add_argument("--tag", default="", help="suffix of the variant name in the rows (e.g. a tuning probe)")
    p.add_argument("--extra", default="", help="extra flags for every run (quoted), e.g. '--epochs 4'")
    p.add_argument("--infrared-from-visible", type=float, default=0.0, metavar="SHARE",
                   help="data: share of each garment's infrared reflectance that follows its visible "
                   "luminance (a cross-modality cue of known strength; rows get the suffix +irSHARE)")
    p.add_argument("--report", action="store_true")
    a = p.parse_args(argv)
    os.makedirs(a.results, exist_ok=True)
    if a.report:
        return report(a.results)
    path = os.path.join(a.results, "runs.jsonl")
    done = set()
    if os.path.isfile(path):
        done = {(r["variant"], r["seed"]) for r in map(json.loads, open(path))}
    for seed in a.seeds:
        for variant in a.variants:
            name = variant + (f"+ir{a.infrared_from_visible:g}" if a.infrared_from_visible else "") + a.tag
            if (name, seed) in done:
                continue
            row = run_one(variant, seed, a.data, a.runs, a.extra.split(), a.infrared_from_visible)
            row["variant"] = name
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("variant", "seed", "final", "train_seconds")}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
