"""Study v3: do AIBN and TNorm help from a pretrained start? (IICS pipeline, synthetic data)

Every row is one ``python -m timm_reid.train`` subprocess at 1 CPU thread with the arguments
recorded in ``RESULTS/runs.jsonl`` (``argv``); a run whose ``final_metrics.json`` exists is not run
again, so the script is resumable. ``--report`` rebuilds ``RESULTS/tables.md`` from ``runs.jsonl``.

    python benchmarks/study_v3.py --init supervised=PRETRAIN/backbone.safetensors --rows entry
    python benchmarks/study_v3.py --report

Configuration, fixed before any run: the demo's data (the default synthetic generator: 150 train /
100 test identities, 5 cameras, style 1, 64x32, a new dataset per seed, generated once per seed
into ``RESULTS/data-seed<S>``) and the demo preset's schedule shortened to ``--rounds`` (4). 64x32
rather than 128x64: 4x the compute per run does not fit the 2-core budget of the study.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "results", "v3")

# The demo preset as it was when v3 ran (runs.jsonl's argv say "--preset demo" alone): spelled out so
# that the rows mean the same after the preset changed to what v3 found.
OLD_DEMO = ["--aibn", "3", "4", "--tnorm", "1", "2", "3", "--aibn-entry", "replace", "--random-erasing", "0.5"]

# Row name -> train flags on top of the demo preset. "plain" rows switch the preset's AIBN/TNorm off.
PLAIN = ["--aibn", "--tnorm"]
ROWS = {
    "demo-preset": [],
    "plain": PLAIN,
    "aibn34-replace": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "replace"],
    "aibn34-blend": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "blend"],
    # the entry that keeps the most zero-shot mAP among the replacements (benchmarks/entry.py): gate 1 (BN
    # statistics over positions) calibrated on 256 unlabeled training images, affine refitted
    "aibn34-replace-g1-cal": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "replace", "--aibn-gate-init", "1",
                                      "--calibrate-aibn", "256", "--calibrate-aibn-affine"],
    # the papers' replacement (gate 0.1) with running statistics calibrated on 256 unlabeled training
    # images: on resnet10t it raises zero-shot mAP (benchmarks/entry.py)
    "aibn34-replace-cal": PLAIN + ["--aibn", "3", "4", "--aibn-entry", "replace", "--calibrate-aibn", "256"],
    # AIBN placement (blend entry)
    "aibn12-blend": PLAIN + ["--aibn", "1", "2", "--aibn-entry", "blend"],
    "aibn1234-blend": PLAIN + ["--aibn", "1", "2", "3", "4", "--aibn-entry", "blend"],
    "aibn34-blend+tnorm123-normalize": ["--aibn", "3", "4", "--aibn-entry", "blend", "--tnorm", "1", "2", "3",
                                        "--tnorm-mode", "normalize"],
    "aibn34-blend+iids": ["--aibn", "3", "4", "--aibn-entry", "blend", "--tnorm", "1", "2", "3",
                          "--self-distill", "1", "--convert-prob", "0.5", "--camera-aggregate"],
    "plain+selfdistill": PLAIN + ["--self-distill", "1"],
    # the demo recipe against the feasibility probe's, one factor at a time (random init)
    "plain+erasing0.3": PLAIN + ["--random-erasing", "0.3"],
    "plain+no-rerank": PLAIN + ["--no-rerank"],
    "plain+oracle-count": PLAIN + ["--oracle-clusters"],
    # the new demo preset, spelled as flags over the old one: TNorm (an identity without conversion)
    # off, AIBN 3-4 blended in, the probe's erasing probability, no re-ranking
    "demo-new": ["--tnorm", "--aibn-entry", "blend", "--random-erasing", "0.3", "--no-rerank"],
    # the adopted demo preset (the same without --no-rerank)
    "demo-v3": ["--tnorm", "--aibn-entry", "blend", "--random-erasing", "0.3"],
}
GROUPS = {
    "entry": ["plain", "aibn34-replace", "aibn34-blend"],
    "placement": ["aibn12-blend", "aibn1234-blend"],
    "tnorm": ["aibn34-blend+tnorm123-normalize", "aibn34-blend+iids", "plain+selfdistill"],
    "recipe": ["demo-preset", "plain", "plain+erasing0.3", "plain+no-rerank", "plain+oracle-count"],
}


# Per method: the preset the rows start from, the flags pinning it as v3 ran, and the schedule flag.
METHODS = {"iics": ("demo", OLD_DEMO, "--rounds"), "ice": ("ice-demo", [], "--epochs")}


def run_dir(results, method, init, row, seed, rounds, centre, model="convnext_atto"):
    prefix = "" if method == "iics" else f"{method}-"  # IICS convnext_atto run names predate --method
    prefix += "" if model == "convnext_atto" else f"{model}-"
    return os.path.join(results, "runs", f"{prefix}{init}-{row}-r{rounds}-{'c' if centre else 'nc'}-s{seed}")


def argv_for(results, method, init_path, row, seed, rounds, centre, out, model="convnext_atto"):
    preset, pinned, schedule = METHODS[method]
    argv = [sys.executable, "-m", "timm_reid.train", "--preset", preset, *pinned, *ROWS[row],
            *([] if model == "convnext_atto" else ["--model", model]),
            schedule, str(rounds), "--seed", str(seed), "--root", os.path.join(results, f"data-seed{seed}"),
            "--output", out, "--threads", "1", "--no-progress", "--no-plots"]
    if init_path:
        argv += ["--checkpoint-path", init_path]
    if not centre:
        argv += ["--no-center-features"]
    return argv


def run_all(args):
    inits = dict(item.split("=", 1) if "=" in item else (item, "") for item in args.init)
    log = os.path.join(args.results, "runs.jsonl")
    os.makedirs(args.results, exist_ok=True)
    rows = [r for g in args.rows for r in GROUPS.get(g, [g])]
    done = _recorded(log)
    for seed in args.seeds:
        for init, path in inits.items():
            for row in rows:
                for centre in args.centre:
                    out = run_dir(args.results, args.method, init, row, seed, args.rounds, centre, args.model)
                    if _relative(out) in done:
                        continue
                    argv = argv_for(args.results, args.method, path, row, seed, args.rounds, centre, out, args.model)
                    if not os.path.isfile(os.path.join(out, "final_metrics.json")):  # else: finished, unrecorded
                        print("running", " ".join(argv[1:]), flush=True)
                        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
                    with open(os.path.join(out, "final_metrics.json")) as f:
                        result = json.load(f)
                    record = {"method": args.method, "model": args.model, "init": init, "init_path": _relative(path), "row": row, "seed": seed,
                              "rounds": args.rounds, "centre": centre, "output": _relative(out),
                              "argv": ["python", *map(_relative, argv[1:])], "seconds": result["wall_time_s"],
                              "initial": result["initial"], "final": result["final"]}
                    with open(log, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps({k: record[k] for k in ("init", "row", "seed", "centre", "seconds")}
                                     | {"mAP": [round(100 * record["initial"]["mAP"], 1),
                                                round(100 * record["final"]["mAP"], 1)]}), flush=True)


def _recorded(log):
    if not os.path.isfile(log):
        return set()
    with open(log) as f:
        return {json.loads(line).get("output") for line in f if line.strip()}


def _relative(arg):
    """Paths inside the repository as the repository-relative paths a reader can re-run."""
    return os.path.relpath(arg) if os.path.isabs(arg) and arg.startswith(os.getcwd() + os.sep) else arg


def entry_table(results):
    """Zero-shot mAP right after patching (``benchmarks/entry.py`` output, one file per init and seed:
    ``entry-seed<S>.jsonl`` from the supervised backbone, ``entry-<init>-seed<S>.jsonl`` from others)."""
    by_variant = {}
    for name in sorted(os.listdir(results)):
        if not (name.startswith("entry-") and name.endswith(".jsonl")):
            continue
        init = name[len("entry-"):].rsplit("seed", 1)[0].rstrip("-") or "supervised"
        with open(os.path.join(results, name)) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        base = next((r["mAP"] for r in rows if r["variant"] == "unpatched"), None)
        if base is None:  # still being written
            continue
        for r in rows:
            by_variant.setdefault((init, r["variant"]), []).append((r["mAP"], r["rank1"], 100 * r["mAP"] / base,
                                                                    r["max_abs_diff"]))
    lines = ["| init | variant (AIBN 3-4) | seeds | zero-shot mAP | rank-1 | % of unpatched mAP | max feature diff |",
             "|---|---|---|---|---|---|---|"]
    for (init, variant), values in sorted(by_variant.items(), key=lambda kv: kv[0][0] != "supervised"):
        cols = list(zip(*values))
        lines.append(f"| {init} | {variant} | {len(values)} | {_ms(cols[0])} | {_ms(cols[1])} | {_ms(cols[2])} | "
                     f"{max(cols[3]):.3g} |")
    return "\n".join(lines) + "\n"


def report(results):
    with open(os.path.join(results, "runs.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    cells = {}
    for r in records:
        cells.setdefault((r.get("method", "iics"), r.get("model", "convnext_atto"), r["init"], r["rounds"], r["centre"], r["row"]), {})[r["seed"]] = r
    lines = ["| method | model | init | rounds (ICE: epochs) | centring | row | seeds | initial mAP | final mAP | final rank-1 | Δ final vs plain (paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, model, init, rounds, centre, row), by_seed in sorted(cells.items()):
        seeds = sorted(by_seed)
        ini = [100 * by_seed[s]["initial"]["mAP"] for s in seeds]
        fin = [100 * by_seed[s]["final"]["mAP"] for s in seeds]
        r1 = [100 * by_seed[s]["final"]["rank1"] for s in seeds]
        plain = cells.get((method, model, init, rounds, centre, "plain"), {})
        deltas = [100 * (by_seed[s]["final"]["mAP"] - plain[s]["final"]["mAP"]) for s in seeds if s in plain]
        delta = "" if row == "plain" or not deltas else (
            f"{_ms(deltas)} ({sum(d > 0 for d in deltas)}/{len(deltas)} > 0)")
        lines.append(f"| {method} | {model} | {init} | {rounds} | {'yes' if centre else 'no'} | {row} | {len(seeds)} | {_ms(ini)} | "
                     f"{_ms(fin)} | {_ms(r1)} | {delta} |")
    text = ("## Zero-shot right after patching\n\n" + entry_table(results) + "\n## After training\n\n"
            + "\n".join(lines) + "\n")
    with open(os.path.join(results, "tables.md"), "w") as f:
        f.write(text)
    print(text)


def _ms(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=DEFAULT_RESULTS)
    p.add_argument("--init", nargs="+", default=["random"], help="NAME=BACKBONE_FILE (or 'random')")
    p.add_argument("--rows", nargs="+", default=["entry"], help=f"row names or groups {sorted(GROUPS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--method", choices=sorted(METHODS), default="iics")
    p.add_argument("--model", default="convnext_atto", help="timm model (the init backbone must be of this model)")
    p.add_argument("--rounds", type=int, default=4, help="IICS rounds, or ICE epochs")
    p.add_argument("--centre", nargs="+", type=int, default=[1], help="1: per-camera centring, 0: none")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    args.centre = [bool(c) for c in args.centre]
    if not args.report:
        run_all(args)
    report(args.results)


if __name__ == "__main__":
    main()
