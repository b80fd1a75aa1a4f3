"""Study v4: when do AIBN and TNorm help? The camera gap split into its factors, at 128x64.

Every run is one ``python -m timm_reid.train`` subprocess at 1 CPU thread, recorded with its argv in
``RESULTS/runs.jsonl``; finished runs are not run again (resumable). ``--report`` rebuilds
``RESULTS/tables.md`` and ``RESULTS/gain_vs_strength.png`` from the records.

    python benchmarks/study_v4.py --phase calibrate             # plain model: no gap vs each factor
    python benchmarks/study_v4.py --phase main --rows entry     # the factor rows at the chosen strengths
    python benchmarks/study_v4.py --report

Fixed before any run (this file's first commit):

- Regime: convnext_atto (``--model resnet10t`` for the ResNet rows) at 128x64 with last stride 1,
  so stage 4 has 8x4 positions and AIBN's instance statistics in stages 3-4 come from >= 32 values;
  the IICS demo schedule cut to 4 rounds (``--rounds``); per-camera centring as the demo.
- Data: the demo's generator sizes (5 cameras, 150 train / 100 test identities), a new dataset per
  seed, with the camera gap made of one factor at a time: ``nogap`` (every factor 0),
  ``<factor>@<strength>`` (only that factor), ``all`` (every factor at its chosen strength) and
  ``all-shared-colour`` (the same, identities sharing colours: pattern and shape tell them apart).
- Calibration: for each factor, the plain model at strengths 1, 2, 4, 8 on seeds 0-1; the strength
  used is the smallest at which the plain model's final mAP is at least 10 points below ``nogap``
  (seed means), else the largest tried (the report says "not reached").
- Rows: plain, AIBN 3-4 blended in (the default entry), AIBN 3-4 replacing the norms (the papers'),
  replacement with calibrated statistics (ResNet), TNorm 1-2-3 the IIDS way and in normalize mode.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from study_v3 import _ms, _recorded, _relative

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "results", "v4")

FACTORS = ("cast", "illumination", "blur", "resolution", "scene", "viewpoint")
STRENGTHS = (1.0, 2.0, 4.0, 8.0)
CALIBRATION_SEEDS = (0, 1)
LOSS_FOR_STRENGTH = 10.0   # mAP points the plain model must lose against no gap
REGIME = ["--height", "128", "--width", "64", "--last-stride", "1"]
GENERATOR = dict(num_cameras=5, num_identities=150, num_test_identities=100, image_size=(128, 64))

PLAIN = ["--aibn", "--tnorm"]
ROWS = {
    "plain": PLAIN,
    "aibn34-blend": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "blend"],
    "aibn34-replace": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "replace"],
    "aibn34-replace-cal": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "replace", "--calibrate-aibn", "256"],
    "tnorm123-iids": ["--aibn", "--tnorm", "1", "2", "3", "--self-distill", "1", "--convert-prob", "0.5",
                      "--camera-aggregate"],
    "tnorm123-normalize": ["--aibn", "--tnorm", "1", "2", "3", "--tnorm-mode", "normalize"],
}
GROUPS = {"entry": ["plain", "aibn34-blend", "aibn34-replace"], "calibrated": ["aibn34-replace-cal"],
          "tnorm": ["tnorm123-iids", "tnorm123-normalize"]}


def generator_options(config: str, strengths: dict) -> dict:
    """Generator options of a data configuration name (module docstring)."""
    off = {f"{f}_strength": 0.0 for f in FACTORS}
    if config == "nogap":
        return off
    if config.startswith("all"):
        options = {**off, **{f"{f}_strength": strengths[f] for f in FACTORS}}
        return options | ({"identity_cues": ("pattern", "shape")} if config == "all-shared-colour" else {})
    factor, strength = config.split("@")
    if factor not in FACTORS:
        raise ValueError(f"unknown data configuration {config!r}")
    return {**off, f"{factor}_strength": float(strength)}


def dataset_root(results, config, seed, strengths):
    from timm_reid.data.synthetic import generate_synthetic

    root = os.path.join(results, "data", f"{config}-seed{seed}")
    if not os.path.isfile(os.path.join(root, "meta.json")):
        generate_synthetic(root, seed=seed, **GENERATOR, **generator_options(config, strengths))
    return root


def run(results, row, config, seed, rounds, model, strengths, init_path=""):
    """One recorded run (skipped when already recorded); returns its record."""
    name = f"{model}-{'init' if init_path else 'random'}-{config}-{row}-r{rounds}-s{seed}"
    out = os.path.join(results, "runs", name)
    log = os.path.join(results, "runs.jsonl")
    if _relative(out) in _recorded(log):
        return
    argv = [sys.executable, "-m", "timm_reid.train", "--preset", "demo", *ROWS[row], *REGIME, "--model", model,
            "--rounds", str(rounds), "--seed", str(seed), "--dataset", "market1501",
            "--root", dataset_root(results, config, seed, strengths), "--output", out,
            "--threads", "1", "--no-progress", "--no-plots"]
    if init_path:
        argv += ["--checkpoint-path", init_path]
    if not os.path.isfile(os.path.join(out, "final_metrics.json")):
        print("running", " ".join(argv[1:]), flush=True)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(os.path.join(out, "final_metrics.json")) as f:
        result = json.load(f)
    record = {"model": model, "init": _relative(init_path) or "random", "config": config, "row": row,
              "seed": seed, "rounds": rounds, "output": _relative(out),
              "argv": ["python", *map(_relative, argv[1:])], "seconds": result["wall_time_s"],
              "initial": result["initial"], "final": result["final"]}
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: record[k] for k in ("config", "row", "seed", "seconds")}
                     | {"mAP": [round(100 * record["initial"]["mAP"], 1), round(100 * record["final"]["mAP"], 1)]}),
          flush=True)


def records(results):
    path = os.path.join(results, "runs.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def chosen_strengths(results, model="convnext_atto", init="random"):
    """factor -> (strength, reached) from the calibration records of one start (module docstring)."""
    final = {}
    for r in records(results):
        if r["row"] == "plain" and r["model"] == model and r["init"] == init and r["seed"] in CALIBRATION_SEEDS:
            final.setdefault(r["config"], []).append(100 * r["final"]["mAP"])
    if "nogap" not in final:
        return {}
    base = statistics.mean(final["nogap"])
    chosen = {}
    for factor in FACTORS:
        tried = [s for s in STRENGTHS if f"{factor}@{s:g}" in final]
        reached = [s for s in tried if base - statistics.mean(final[f"{factor}@{s:g}"]) >= LOSS_FOR_STRENGTH]
        if tried:
            chosen[factor] = (min(reached), True) if reached else (max(tried), False)
    return chosen


def calibrate(args):
    """The plain model on ``nogap`` and every factor at every strength (or only ``--configs``),
    from ``--init-path`` when given (the main rows then use the strengths of that start)."""
    configs = args.configs or ["nogap", *(f"{f}@{s:g}" for f in FACTORS for s in STRENGTHS)]
    for seed in (s for s in args.seeds if s in CALIBRATION_SEEDS):
        for config in configs:
            run(args.results, "plain", config, seed, args.rounds, args.model, {}, args.init_path)


def main_rows(args):
    chosen = chosen_strengths(args.results, args.model, _relative(args.init_path) or "random")
    strengths = {f: s for f, (s, _) in chosen.items()}
    configs = args.configs or ["nogap", *(f"{f}@{strengths.get(f, 0):g}" for f in FACTORS), "all", "all-shared-colour"]
    # "factor@strength" names its strength; only "all" and "all-shared-colour" need the chosen ones
    needed = set(FACTORS) if any(c.startswith("all") for c in configs) else set()
    missing = sorted(needed - set(chosen))
    if missing:
        sys.exit(f"calibrate first: no calibration runs for {', '.join(missing)} "
                 "(python benchmarks/study_v4.py --phase calibrate)")
    rows = [r for g in args.rows for r in GROUPS.get(g, [g])]
    for seed in args.seeds:
        for config in configs:
            for row in rows:
                run(args.results, row, config, seed, args.rounds, args.model, strengths, args.init_path)


def report(results):
    cells = {}
    for r in records(results):
        cells.setdefault((r["model"], r["init"], r["rounds"], r["config"], r["row"]), {})[r["seed"]] = r
    lines = ["| model | init | config | row | seeds | initial mAP | final mAP | Δ vs plain (paired) |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, init, rounds, config, row), by_seed in sorted(cells.items()):
        seeds = sorted(by_seed)
        plain = cells.get((model, init, rounds, config, "plain"), {})
        deltas = [100 * (by_seed[s]["final"]["mAP"] - plain[s]["final"]["mAP"]) for s in seeds if s in plain]
        delta = "" if row == "plain" or not deltas else f"{_ms(deltas)} ({sum(d > 0 for d in deltas)}/{len(deltas)} > 0)"
        lines.append(f"| {model} | {init} | {config} | {row} | {len(seeds)} | "
                     f"{_ms([100 * by_seed[s]['initial']['mAP'] for s in seeds])} | "
                     f"{_ms([100 * by_seed[s]['final']['mAP'] for s in seeds])} | {delta} |")
    starts = sorted({r["init"] for r in records(results) if r["row"] == "plain"})
    head = "## Strengths used (plain model loses >= 10 mAP against no gap; among the strengths tried so far)\n"
    for init in starts:
        chosen = chosen_strengths(results, init=init)
        head += f"\n{init}:\n" + "\n".join(
            f"- {f}: {s:g}" + ("" if ok else " (10 points not reached; largest tried)") for f, (s, ok) in chosen.items())
    text = head + "\n\n## Runs\n\n" + "\n".join(lines) + "\n"
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "tables.md"), "w") as f:
        f.write(text)
    plot_gain_vs_strength(results, os.path.join(results, "gain_vs_strength.png"))
    print(text)


def gains_by_strength(results):
    """``{(init, factor, row): [(strength, mean paired delta vs plain, seeds), ...]}``: each
    entry's final-mAP gain over the plain model on the same data and seed, at strength 0 (``nogap``)
    and every strength of that factor run so far."""
    final = {}
    for r in records(results):
        final[(r["model"], r["init"], r["config"], r["row"], r["seed"])] = 100 * r["final"]["mAP"]
    points = {}
    for (model, init, config, row, seed), value in final.items():
        plain = final.get((model, init, config, "plain", seed))
        if row == "plain" or plain is None or config.startswith("all"):
            continue
        factors = FACTORS if config == "nogap" else [config.split("@")[0]]
        strength = 0.0 if config == "nogap" else float(config.split("@")[1])
        for factor in factors:
            points.setdefault((init, factor, row, strength), []).append(value - plain)
    curves = {}
    for (init, factor, row, strength), deltas in sorted(points.items()):
        curves.setdefault((init, factor, row), []).append((strength, statistics.mean(deltas), len(deltas)))
    return curves


def plot_gain_vs_strength(results, path):
    """One panel per factor (a row of panels per start): the mAP gain of each entry over plain
    against the factor's strength; a factor whose only point is ``nogap`` is left out."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    curves = {k: v for k, v in gains_by_strength(results).items() if any(s > 0 for s, _, _ in v)}
    if not curves:
        return
    inits = sorted({init for init, _, _ in curves})
    factors = [f for f in FACTORS if any(f == factor for _, factor, _ in curves)]
    fig = Figure(figsize=(3.2 * len(factors), 2.8 * len(inits)), constrained_layout=True)
    axes = fig.subplots(len(inits), len(factors), squeeze=False, sharey=True)
    for i, init in enumerate(inits):
        for j, factor in enumerate(factors):
            ax = axes[i][j]
            for (c_init, c_factor, row), points in sorted(curves.items()):
                if (c_init, c_factor) == (init, factor):
                    xs, ys, ns = zip(*points)
                    ax.plot(xs, ys, marker="o", label=row)
                    for x, y, n in points:
                        ax.annotate(f"n={n}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_title(f"{factor} ({'random init' if init == 'random' else 'supervised start'})", fontsize=8)
            ax.set_xlabel("strength (0: no gap)", fontsize=8)
            if j == 0:
                ax.set_ylabel("final mAP gain over plain", fontsize=8)
            ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=DEFAULT_RESULTS)
    p.add_argument("--phase", choices=("calibrate", "main"), default="calibrate")
    p.add_argument("--rows", nargs="+", default=["entry"], help=f"row names or groups {sorted(GROUPS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=None,
                   help="only these data configurations (e.g. nogap blur@4; main: default every factor at its chosen strength)")
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--init-path", default="", help="a backbone.safetensors to start from (default: random init)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        (calibrate if args.phase == "calibrate" else main_rows)(args)
    report(args.results)


if __name__ == "__main__":
    main()
