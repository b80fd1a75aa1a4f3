"""Ablation study in miniature: the IICS/IIDS two-stage pipeline with AIBN and TNorm on synthetic data.

Do the claims of the papers (two stages beat either stage alone; AIBN in the late stages and TNorm
after the early stages help cross-camera retrieval; the gain grows with the camera style gap) hold
on the built-in synthetic multi-camera benchmark, at a size that runs on 2 CPU cores?

Five studies share one run configuration, the ``BASE`` row below: both stages, AIBN in stages 3-4,
TNorm after stages 1-3 in ``normalize`` mode (per-camera statistics in every forward; ``transform``
mode without conversion is an identity, which made the first pass's TNorm study void), per-camera
centring of the clustering features (without it nothing learns here), Jaccard mu_0 = 0.02, weak
camera style (``style_strength=1``), centroid-initialised heads, 8 rounds. Each study changes one
thing:

1. ``stages``: untrained (the initial evaluation of the BASE runs), intra only, inter only without
   the Jaccard term, intra + inter.
2. ``aibn``: AIBN placement (TNorm fixed at 1-2-3).
3. ``tnorm``: TNorm placement (AIBN fixed at 3-4), plus the IIDS use of TNorm: ``transform`` mode
   with two-view self-distillation, style conversion of the second view with probability 0.5 and
   camera-aggregated test features.
4. ``camera``: no camera-aware step / per-camera centring of the clustering features / in-network
   AIBN + TNorm / both.
5. ``style``: camera style strength 0 (none), 1 (weak), 2, 4 (strong), plain model vs AIBN + TNorm.

Rows shared by several studies are one run (keyed by configuration + model + seed). Every finished
run is appended to ``RESULTS/runs.jsonl``; a re-run skips the runs already there, so the script is
resumable and ``--budget-minutes`` may stop it early (the tables then say how many seeds each cell
has). ``--report`` only rebuilds the tables and plots from ``runs.jsonl``.

Commands (the ones that produced ``benchmarks/results/``)::

    python benchmarks/ablation.py --workers 2 --budget-minutes 55   # runs in priority order, then the report
    python benchmarks/ablation.py --workers 2                       # continues with the runs not done yet
    python benchmarks/ablation.py --report                          # tables + plots from runs.jsonl
    python benchmarks/ablation.py --list                            # the planned runs, in priority order
    python benchmarks/ablation.py --smoke                           # 1 tiny run into a temp folder

Each run is ``python -m timm_reid.train`` (called in-process through ``timm_reid.train.main``)
with the arguments recorded in ``runs.jsonl`` (``argv``), 1 CPU thread per run.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "results")

# ------------------------------------------------------------------------------------------------ sizes

# One generator configuration for every row of every study (the style study varies only
# style_strength, its subject). Chosen for cost before any run of the study, not tuned on outcomes.
DATA = dict(synthetic_cameras=4, synthetic_identities=32, synthetic_test_identities=20, height=64, width=32)

# Training schedule shared by all runs: the demo preset (AdamW 1e-3, pad 4, 16 images per camera per
# intra step, 16 x 4 inter batches) shrunk to 2 rounds. Cluster counts follow the demo preset's
# ratios to the dataset size (intra ~ identities seen per camera, inter ~ 1.2 x train identities);
# they are not the true counts of any particular seed (no oracle).
SCHEDULE = dict(rounds=8, intra_epochs=1, inter_epochs=2, intra_clusters=22, inter_clusters=40, eval_every=0,
                head_init="centroid")

MODELS = ("convnext_atto", "resnet10t")
SEEDS = (0, 1, 2)

BASE = dict(stages=("intra", "inter"), aibn=(3, 4), tnorm=(1, 2, 3), tnorm_mode="normalize", iids=False,
            center=True, mu0=0.02, style=1.0)
PLAIN = dict(BASE, aibn=(), tnorm=())


def _cfg(**changes):
    return dict(BASE, **changes)


STUDIES = {
    "stages": {
        "title": "Study 1 - training stages (AIBN 3-4, TNorm 1-2-3, centring, weak style)",
        "rows": [
            ("untrained", dict(BASE, untrained=True)),
            ("intra only", _cfg(stages=("intra",))),
            ("inter only, no Jaccard", _cfg(stages=("inter",), mu0=0.0)),
            ("intra + inter", dict(BASE)),
        ],
    },
    "aibn": {
        "title": "Study 2 - AIBN placement (TNorm after 1-2-3, centring, weak style)",
        "rows": [
            ("none", _cfg(aibn=())),
            ("all (1-2-3-4)", _cfg(aibn=(1, 2, 3, 4))),
            ("1-2", _cfg(aibn=(1, 2))),
            ("4", _cfg(aibn=(4,))),
            ("2-3-4", _cfg(aibn=(2, 3, 4))),
            ("3-4", dict(BASE)),
        ],
    },
    "tnorm": {
        "title": "Study 3 - TNorm placement (AIBN in 3-4, centring, weak style)",
        "rows": [
            ("none", _cfg(tnorm=())),
            ("after 1", _cfg(tnorm=(1,))),
            ("1-2", _cfg(tnorm=(1, 2))),
            ("1-2-3", dict(BASE)),
            ("1-2-3-4", _cfg(tnorm=(1, 2, 3, 4))),
            ("1-2-3, IIDS transform + conversion", _cfg(tnorm_mode="transform", iids=True)),
        ],
    },
    "camera": {
        "title": "Study 4 - camera-aware step (weak style)",
        "rows": [
            ("none", dict(PLAIN, center=False)),
            ("per-camera centring", dict(PLAIN)),
            ("AIBN 3-4 + TNorm 1-2-3", _cfg(center=False)),
            ("both", dict(BASE)),
        ],
    },
    "style": {
        "title": "Study 5 - camera style strength, plain vs AIBN 3-4 + TNorm 1-2-3 (both with centring)",
        "rows": [(f"{kind}, style {s:g}", dict(cfg, style=s))
                 for s in (0.0, 1.0, 2.0, 4.0) for kind, cfg in (("plain", PLAIN), ("AIBN+TNorm", BASE))],
    },
}

# Published Market-1501 numbers (mAP / rank-1, %) for the same rows, only where we are sure of them:
# - IICS (CVPR 2021) and IIDS (TPAMI 2022), full method with ResNet-50: as listed in the README of
#   the authors' repository github.com/SY-Xuan/IIDS ("Results" table).
# - Qureshi & Dehghani: Iso-ConvNeXt-S mAP 72.7 without and 79.7 with AIBN + TNorm (rank-1 not
#   given here); ConvNeXt-B 83.1 mAP (their Table 2, Market-1501).
# Every other cell is "n/a (not reported here)": the per-row ablation tables of the papers are not
# reproduced from memory.
PAPER = {
    ("stages", "intra + inter"): "IICS 72.9 / 89.5; IIDS 78.0 / 91.2 (ResNet-50)",
    ("camera", "none"): "Iso-ConvNeXt-S 72.7 mAP (IICS pipeline without AIBN/TNorm)",
    ("camera", "AIBN 3-4 + TNorm 1-2-3"): "Iso-ConvNeXt-S 79.7 mAP; ConvNeXt-B 83.1 mAP",
    ("aibn", "3-4"): "Iso-ConvNeXt-S 79.7 mAP (with TNorm 1-2-3)",
    ("tnorm", "1-2-3"): "Iso-ConvNeXt-S 79.7 mAP (with AIBN 3-4)",
}
NA = "n/a (not reported here)"

# ------------------------------------------------------------------------------------------------ runs


def run_key(model, cfg, seed):
    """Canonical identity of a run (the untrained flag is not part of it: untrained rows read the
    initial evaluation of the matching trained run)."""
    c = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(cfg.items()) if k != "untrained"}
    return json.dumps({"model": model, "seed": seed, **c}, sort_keys=True)


NO_CENTRING = "no-centring.yaml"  # the demo preset centres; this file (same as --no-center-features) does not


def run_argv(model, cfg, seed, output, data_root, runs_dir):
    """Command-line arguments of ``python -m timm_reid.train`` for one run."""
    argv = ["--preset", "demo", "--model", model, "--seed", str(seed), "--output", output, "--root", data_root,
            "--threads", "1", "--no-progress", "--no-plots",
            "--style-strength", f"{cfg['style']:g}", "--mu0", f"{cfg['mu0']:g}",
            "--stages", *cfg["stages"], "--aibn", *map(str, cfg["aibn"]), "--tnorm", *map(str, cfg["tnorm"]),
            "--tnorm-mode", cfg["tnorm_mode"]]
    if cfg["iids"]:
        argv += ["--self-distill", "1", "--convert-prob", "0.5", "--camera-aggregate"]
    for k, v in {**DATA, **SCHEDULE}.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    if cfg["center"]:
        argv.append("--center-features")
    else:
        argv += ["--config", os.path.join(runs_dir, NO_CENTRING)]
    return argv


def check_resolved(output, cfg, model):
    """The options the run actually used (its config.yaml) are the ones asked for."""
    import yaml

    with open(os.path.join(output, "config.yaml")) as f:
        used = yaml.safe_load(f)
    want = {"model": model, "center_features": cfg["center"], "aibn": list(cfg["aibn"]),
            "tnorm": list(cfg["tnorm"]), "stages": list(cfg["stages"]), "mu0": cfg["mu0"],
            "tnorm_mode": cfg["tnorm_mode"], "convert_prob": 0.5 if cfg["iids"] else 0.0,
            "style_strength": cfg["style"], **DATA, **SCHEDULE}
    wrong = {k: (used.get(k), v) for k, v in want.items() if used.get(k) != v}
    if wrong:
        raise RuntimeError(f"run {output} used other options than asked (used, asked): {wrong}")


def data_root(runs_dir, seed, style):
    return os.path.join(runs_dir, "data", f"seed{seed}-style{style:g}")


def plan(models, seeds, studies):
    """Unique runs in priority order, so that a run cut short by ``--budget-minutes`` still fills
    whole cells (all seeds of a block before the next block): for the first model the camera-aware,
    stage, TNorm and AIBN studies; the camera-aware and stage studies for the other model; the
    style sweep of the first model at strengths 0 and 4, then 2; then everything else."""
    first, rest = list(models[:1]), list(models[1:])
    ends = lambda row: row.endswith((" 0", " 1", " 4"))  # noqa: E731  style 0 / 1 / 4 rows
    blocks = [("camera", first, seeds, None), ("stages", first, seeds, None), ("tnorm", first, seeds, None),
              ("aibn", first, seeds, None), ("camera", rest, seeds, None), ("stages", rest, seeds, None),
              ("style", first, seeds, ends), ("style", first, seeds, None),
              ("style", rest, seeds, None), ("tnorm", rest, seeds, None), ("aibn", rest, seeds, None)]
    jobs, seen = [], set()
    for block, block_models, block_seeds, keep in blocks:
        if block not in studies:
            continue
        for seed in block_seeds:
            for model in block_models:
                for row, cfg in STUDIES[block]["rows"]:
                    key = run_key(model, cfg, seed)
                    if key not in seen and (keep is None or keep(row)):
                        seen.add(key)
                        jobs.append({"key": key, "model": model, "seed": seed,
                                     "cfg": {k: v for k, v in cfg.items() if k != "untrained"}})
    return jobs


def _worker_init():
    # The pipeline logs every round to stdout; the run directory keeps the full log (log.txt).
    sys.stdout = open(os.devnull, "w")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def execute(job, runs_dir):
    """Run one configuration in this process; returns the record appended to runs.jsonl."""
    import torch

    torch.set_num_threads(1)
    from timm_reid.train import main, parse_args

    cfg = job["cfg"]
    name = f"{job['model']}-seed{job['seed']}-{hashlib.sha1(job['key'].encode()).hexdigest()[:10]}"
    output = os.path.join(runs_dir, "runs", name)
    if os.path.isdir(output):  # a run interrupted earlier: start it again from scratch
        import shutil

        shutil.rmtree(output)
    argv = run_argv(job["model"], cfg, job["seed"], output, data_root(runs_dir, job["seed"], cfg["style"]), runs_dir)
    wall0, cpu0 = time.time(), time.process_time()
    result = main(parse_args(argv))
    check_resolved(output, cfg, job["model"])
    history = []
    path = os.path.join(output, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    last = history[-1] if history else {}
    keep = ("intra_ari", "inter_ari", "inter_nmi", "inter_purity", "inter_clusters", "inter_largest",
            "inter_multi_camera_share", "inter_mu", "intra_loss", "inter_ce_loss", "inter_triplet_loss")
    return {
        "key": job["key"], "model": job["model"], "seed": job["seed"], "cfg": cfg,
        "initial": result["initial"], "final": result["final"],
        "last_round": {k: last[k] for k in keep if k in last},
        "wall_s": round(time.time() - wall0, 1), "cpu_s": round(time.process_time() - cpu0, 1),
        "argv": ["python", "-m", "timm_reid.train", *argv],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(), "git_head": _git_head(),
    }


def _git_head():
    import subprocess

    try:
        out = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def _versions():
    import timm
    import torch

    import timm_reid

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "timm_reid": timm_reid.__version__}


def load_runs(path):
    if not os.path.isfile(path):
        return {}
    runs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                runs[rec["key"]] = rec
    return runs


def prepare_data(jobs, runs_dir):
    """Generate each (seed, style) dataset once, before the workers start (no concurrent writers)."""
    from timm_reid.data import build_dataset

    os.makedirs(runs_dir, exist_ok=True)
    with open(os.path.join(runs_dir, NO_CENTRING), "w") as f:
        f.write("center_features: false\n")
    for seed, style in sorted({(j["seed"], j["cfg"]["style"]) for j in jobs}):
        build_dataset("synthetic", data_root(runs_dir, seed, style), seed=seed,
                      num_identities=DATA["synthetic_identities"],
                      num_test_identities=DATA["synthetic_test_identities"],
                      num_cameras=DATA["synthetic_cameras"], style_strength=style,
                      image_size=(DATA["height"], DATA["width"]))


def run_all(jobs, *, runs_dir, results_path, workers, budget_minutes, max_runs=None):
    """Run ``jobs`` (skipping those in ``results_path``), ``workers`` at a time, appending each
    finished run; stop submitting once ``budget_minutes`` have passed or ``max_runs`` started."""
    done = load_runs(results_path)
    todo = [j for j in jobs if j["key"] not in done][:max_runs]
    print(f"{len(jobs)} runs planned, {len(jobs) - len(todo)} already in {results_path}, {len(todo)} to run",
          flush=True)
    if not todo:
        return
    prepare_data(todo, runs_dir)
    start = time.time()
    deadline = start + 60 * budget_minutes if budget_minutes else math.inf
    pending, queue, finished = {}, list(todo), 0
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        while queue or pending:
            while queue and len(pending) < workers and time.time() < deadline:
                job = queue.pop(0)
                pending[pool.submit(execute, job, runs_dir)] = job
            if not pending:
                break
            ready, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in ready:
                job = pending.pop(fut)
                try:
                    rec = fut.result()
                except Exception as e:  # a failing configuration is reported, the others go on
                    print(f"FAILED {job['key']}: {type(e).__name__}: {e}", flush=True)
                    continue
                with open(results_path, "a") as f:
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
                finished += 1
                print(f"[{(time.time() - start) / 60:5.1f} min] {finished}/{len(todo)} {job['model']} seed "
                      f"{job['seed']} {_short(job['cfg'])}: mAP {100 * rec['final']['mAP']:.1f} rank-1 "
                      f"{100 * rec['final']['rank1']:.1f} ({rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} s cpu)",
                      flush=True)
    left = len(queue)
    if left:
        print(f"budget of {budget_minutes} min reached: {left} runs not started (re-run to continue)", flush=True)


def _short(cfg):
    return (f"stages={'+'.join(cfg['stages'])} aibn={'-'.join(map(str, cfg['aibn'])) or 'none'} "
            f"tnorm={'-'.join(map(str, cfg['tnorm'])) or 'none'}({cfg['tnorm_mode']}{'+iids' * cfg['iids']}) "
            f"centre={int(cfg['center'])} "
            f"mu0={cfg['mu0']:g} style={cfg['style']:g}")


# ------------------------------------------------------------------------------------------------ report


def _stats(values):
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std, n


REFERENCE_ROW = {"stages": "intra + inter", "aibn": "none", "tnorm": "none", "camera": "none"}


def aggregate(runs, models, seeds):
    """{(study, row, model): cell} with mean/std/n (in %) of mAP, rank-1 and the same-camera top-1
    share over the seeds that ran, the last inter stage's pseudo-label diagnostics, and the paired
    (same seed, hence same data) mAP difference to the study's reference row."""
    def records(model, cfg):
        return {s: runs[k] for s, k in ((s, run_key(model, cfg, s)) for s in seeds) if k in runs}

    def value(rec, cfg, metric):
        return 100 * rec["initial" if cfg.get("untrained") else "final"][metric]

    table = {}
    for study, spec in STUDIES.items():
        rows = dict(spec["rows"])
        for row, cfg in spec["rows"]:
            if study == "style":
                ref_cfg = dict(PLAIN, style=cfg["style"])
            else:
                ref_cfg = rows[REFERENCE_ROW[study]]
            for model in models:
                recs = records(model, cfg)
                cell = {"seeds": sorted(recs)}
                for name, src in (("mAP", "mAP"), ("rank1", "rank1"), ("same_cam", "same_camera_top1")):
                    cell[name] = _stats([value(r, cfg, src) for r in recs.values()])
                cell["untrained_mAP"] = _stats([100 * r["initial"]["mAP"] for r in recs.values()])
                if not cfg.get("untrained"):
                    for name in ("inter_ari", "inter_multi_camera_share", "inter_largest"):
                        cell[name] = _stats([r["last_round"][name] for r in recs.values()
                                             if name in r.get("last_round", {})])
                refs = records(model, ref_cfg)
                both = sorted(set(recs) & set(refs))
                cell["delta_mAP"] = _stats([value(recs[s], cfg, "mAP") - value(refs[s], ref_cfg, "mAP") for s in both])
                table[(study, row, model)] = cell
    return table


def _fmt(stat, digits=1, signed=False):
    if stat is None:
        return "not run"
    mean, std, n = stat
    sign = "+" if signed else ""
    if n == 1:
        return f"{mean:{sign}.{digits}f} (1 seed)"
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}" + ("" if n == 3 else f" ({n} seeds)")


def markdown(table, models):
    lines = []
    for study, spec in STUDIES.items():
        ref = "plain at the same style" if study == "style" else REFERENCE_ROW[study]
        for m in models:
            lines += [f"### {spec['title']} - {m}", ""]
            head = ["row", "mAP", "rank-1", "same-camera top-1", f"Δ mAP vs {ref} (paired by seed)",
                    "mAP before training", "last inter stage: ARI / multi-camera clusters",
                    "paper (Market-1501, mAP / rank-1 %)"]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for row, cfg in spec["rows"]:
                c = table[(study, row, m)]
                is_ref = row == ref if study != "style" else row.startswith("plain")
                cells = [row, _fmt(c["mAP"]), _fmt(c["rank1"]), _fmt(c["same_cam"]),
                         "(reference)" if is_ref else _fmt(c["delta_mAP"], signed=True),
                         _fmt(c["untrained_mAP"])]
                if cfg.get("untrained") or c.get("inter_ari") is None:
                    cells.append("-")
                else:
                    cells.append(f"{_fmt(c['inter_ari'], 2)} / {_fmt(c.get('inter_multi_camera_share'), 2)}")
                cells.append(PAPER.get((study, row), NA))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plots(table, models, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for study, spec in STUDIES.items():
        if study == "style":
            continue
        rows = [r for r, _ in spec["rows"]]
        filled = [r for r in rows if any(table[(study, r, m)]["mAP"] for m in models)]
        path = os.path.join(out_dir, f"study_{study}.png")
        if len(filled) < 2:  # nothing to compare yet: no plot (and none left over from earlier runs)
            if os.path.exists(path):
                os.remove(path)
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        width = 0.8 / len(models)
        for ax, metric in zip(axes, ("mAP", "rank1")):
            for i, m in enumerate(models):
                stats = [table[(study, r, m)][metric] for r in rows]
                xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(rows))]
                means = [s[0] if s else float("nan") for s in stats]
                errs = [s[1] if s and s[2] > 1 else 0.0 for s in stats]
                ax.bar(xs, means, width, yerr=errs, capsize=3, label=m)
            ax.set_xticks(range(len(rows)), rows, rotation=20, ha="right", fontsize=8)
            ax.set(title=metric.replace("rank1", "rank-1") + " (%, mean ± std over seeds)")
            ax.set_ylim(bottom=0)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(spec["title"], fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    styles = (0.0, 1.0, 2.0, 4.0)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for ax, m in zip(axes[0], models):
        for colour, kind in (("C0", "plain"), ("C1", "AIBN+TNorm")):
            for key, style, label in (("mAP", "-", "after training"), ("untrained_mAP", "--", "before training")):
                pts = [(s, table[("style", f"{kind}, style {s:g}", m)][key]) for s in styles]
                pts = [(s, st) for s, st in pts if st is not None]
                if not pts:
                    continue
                ax.errorbar([s for s, _ in pts], [st[0] for _, st in pts],
                            yerr=[st[1] if st[2] > 1 else 0.0 for _, st in pts], color=colour, linestyle=style,
                            marker="o" if key == "mAP" else "x", capsize=3, label=f"{kind}, {label}")
        ax.set(title=f"{m}: mAP vs camera style strength", xlabel="style_strength (0 none, 1 weak, 4 strong)",
               ylabel="mAP (%)", xticks=styles)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "study_style.png"), dpi=100)
    plt.close(fig)


def report(results_dir, models, seeds):
    runs = load_runs(os.path.join(results_dir, "runs.jsonl"))
    table = aggregate(runs, models, seeds)
    text = markdown(table, models)
    cpu = sum(r["cpu_s"] for r in runs.values())
    wall = sum(r["wall_s"] for r in runs.values())
    header = (f"<!-- generated by `python benchmarks/ablation.py --report` from runs.jsonl; do not edit -->\n\n"
              f"mean ± standard deviation over seeds {list(seeds)} (sample std), in %; "
              f"{len(runs)} runs, {cpu / 60:.0f} CPU-minutes in total ({wall / 60:.0f} run-minutes of wall "
              "time, 2 runs in parallel).\n\n")
    with open(os.path.join(results_dir, "tables.md"), "w") as f:
        f.write(header + text)
    summary = {f"{s}|{r}|{m}": c for (s, r, m), c in table.items()}
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    plots(table, models, results_dir)
    print(header + text)


# ------------------------------------------------------------------------------------------------ main


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default=DEFAULT_RESULTS, help="folder of runs.jsonl, tables and plots")
    p.add_argument("--runs-dir", default=os.path.join(tempfile.gettempdir(), "timm_reid_ablation"),
                   help="scratch folder for generated data and run directories")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (1 thread each)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop starting new runs after this many minutes (finished runs are kept)")
    p.add_argument("--max-runs", type=int, default=None, help="start at most this many new runs")
    p.add_argument("--report", action="store_true", help="only rebuild tables and plots from runs.jsonl")
    p.add_argument("--list", action="store_true", help="print the planned runs and exit")
    p.add_argument("--smoke", action="store_true", help="one 1-round run into a temporary folder, then exit")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.smoke:
        global SCHEDULE, DATA
        SCHEDULE = dict(SCHEDULE, rounds=1, inter_epochs=1)
        DATA = dict(DATA, synthetic_identities=16, synthetic_test_identities=8)
        with tempfile.TemporaryDirectory() as tmp:
            job = plan(args.models[:1], args.seeds[:1], ["camera"])[0]
            prepare_data([job], tmp)
            rec = execute(job, tmp)
        print(json.dumps({k: rec[k] for k in ("model", "cfg", "initial", "final", "wall_s", "cpu_s")}))
        return 0
    jobs = plan(args.models, args.seeds, args.studies)
    if args.list:
        for j in jobs:
            print(j["model"], j["seed"], _short(j["cfg"]))
        print(f"{len(jobs)} runs")
        return 0
    os.makedirs(args.results, exist_ok=True)
    if not args.report:
        run_all(jobs, runs_dir=args.runs_dir, results_path=os.path.join(args.results, "runs.jsonl"),
                workers=args.workers, budget_minutes=args.budget_minutes, max_runs=args.max_runs)
    report(args.results, args.models, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
