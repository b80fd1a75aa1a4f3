"""Peak-memory measurement for the evaluation/clustering benchmarks: one fresh process per run.

`run_isolated(script, args)` runs `python script --worker ...` in a subprocess and returns the
JSON dict the worker prints last. Inside the worker, `measure(fn)` times `fn()` and reports the
peak resident-set growth: `ru_maxrss` after the call minus the RSS just before it (inputs already
built), i.e. everything the method allocates, NumPy/torch buffers and copies alike.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn):
    """(result, seconds, peak RSS growth in bytes) of one call of `fn`."""
    gc.collect()
    before = _current_rss_bytes()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result, seconds, max(0, peak - before)


def run_isolated(script: str, args: list[str], threads: int) -> dict:
    """Run one measurement in a fresh interpreter with `threads` BLAS/OpenMP threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, script, "--worker", *args], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
