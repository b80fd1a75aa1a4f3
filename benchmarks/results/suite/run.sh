#!/bin/sh
# The suite's commands in the order they ran (from the repository root; one process at a time,
# 1 thread). Every step is resumable: rerunning it skips what is done.
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python benchmarks/suite.py --generate                      # the datasets (benchmarks/results/suite/data)
python benchmarks/suite_features.py --inits random         # initial-model features (no training)
python benchmarks/suite_estimators.py                      # candidate estimators on the first clustering
# full demo runs at the presets' defaults (auto), random init, in this order; the first row
# (s11, ICE) ran with the earlier eps rule "most-clusters" (its metrics.jsonl records the rule)
S="python benchmarks/suite.py --inits random"
$S --methods ice --configs s11-four-cameras-110 demo-data
$S --methods iics --configs demo-data
$S --methods ice --configs s03-400-identities
$S --methods iics --configs s11-four-cameras-110
$S --methods ice --configs s01-two-cameras s02-eight-cameras
$S --methods iics --configs s03-400-identities
$S --methods ice --configs s04-40-identities s05-weak-style
$S --methods iics --configs s01-two-cameras
$S --methods ice --configs s06-strong-style s07-occluded s08-uneven-cameras s12-five-cameras-120
$S --methods iics --configs s12-five-cameras-120 s02-eight-cameras s04-40-identities
$S --methods ice --configs s09-128x64-style2 s10-128x64-dense
$S --methods iics --configs s05-weak-style s06-strong-style s07-occluded s08-uneven-cameras s09-128x64-style2 s10-128x64-dense
# then (not reached in the first session): the --init isr rows, and the old fixed values for comparison
python benchmarks/suite.py --methods ice iics --inits isr
python benchmarks/suite.py --methods ice iics --inits random --variant fixed
python benchmarks/suite.py --report --refresh-rounds
# third session (2026-12-04): the demos on their own data at seeds 1-2 with the automatic settings (the
# 3-seed check of the goal), run from a second checkout while the v4 study ran beside them (2 runs at a time)
$S --methods ice --configs demo-data-seed1 demo-data-seed2
$S --methods iics --configs demo-data-seed1 demo-data-seed2
# the IICS demo with the old fixed counts (100 / 180) on seeds 1-2, paired with the automatic rows above
$S --methods iics --configs demo-data-seed1 --variant fixed
$S --methods iics --configs demo-data-seed2 --variant fixed
