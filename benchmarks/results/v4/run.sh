#!/bin/sh
# Study v4 commands in the order they ran (from the repository root; one process at a time,
# 1 thread). Resumable: rerunning skips what is recorded in runs.jsonl.
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# first pass of the calibration: no gap and each factor at strength 4, seed 0 (random init)
python benchmarks/study_v4.py --phase calibrate --seeds 0 --configs nogap cast@4 illumination@4 blur@4 resolution@4 scene@4 viewpoint@4
# still to run: the full calibration (both seeds, strengths 1/2/4/8), then the main rows
# python benchmarks/study_v4.py --phase calibrate
# python benchmarks/study_v4.py --phase main --rows entry calibrated tnorm
