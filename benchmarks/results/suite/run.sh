#!/bin/sh
# The suite's commands in the order they ran (from the repository root; one process at a time,
# 1 thread). Every step is resumable: rerunning it skips what is done.
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python benchmarks/suite.py --generate                      # the datasets (benchmarks/results/suite/data)
python benchmarks/suite_features.py --inits random         # initial-model features (no training)
python benchmarks/suite_estimators.py                      # candidate estimators on the first clustering
# full demo runs, ICE from random init first (the demo's own data is the reference row)
python benchmarks/suite.py --methods ice --inits random --configs s11-four-cameras-110 s03-400-identities s01-two-cameras
python benchmarks/suite.py --methods ice --inits random --configs demo-data s02-eight-cameras s04-40-identities \
    s05-weak-style s06-strong-style s07-occluded s08-uneven-cameras s12-five-cameras-120 s09-128x64-style2 s10-128x64-dense
python benchmarks/suite.py --methods iics --inits random --configs demo-data s11-four-cameras-110 s12-five-cameras-120 \
    s03-400-identities s01-two-cameras s02-eight-cameras s04-40-identities s05-weak-style s06-strong-style s07-occluded \
    s08-uneven-cameras s09-128x64-style2 s10-128x64-dense
python benchmarks/suite.py --methods ice iics --inits isr
python benchmarks/suite.py --report --refresh-rounds
