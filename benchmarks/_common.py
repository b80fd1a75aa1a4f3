"""Shared benchmark plumbing: JSON-line rows that record the environment, robust timing."""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch


def environment() -> Dict[str, str]:
    """Device and versions, recorded on every row so figures can be compared later."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu:{platform.processor() or platform.machine()}"
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def emit(row: Dict) -> None:
    """Print one JSON line (with the environment) and flush, so partial runs still report."""
    print(json.dumps({**row, **environment()}, sort_keys=True), flush=True)
    sys.stdout.flush()


def quantiles(samples: List[float]) -> Dict[str, float]:
    """Median with p20 / p80 of a list of timings (seconds -> milliseconds)."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"median_ms": 1e3 * statistics.median(ordered), "p20_ms": 1e3 * pick(0.2), "p80_ms": 1e3 * pick(0.8)}


def time_interleaved(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 2, clock: str = "wall",
                     baseline: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Time several candidates round-robin, so machine noise hits all of them alike.

    ``clock="thread"`` counts this thread's CPU time instead of wall time: on a machine shared with
    other jobs it leaves out the time the scheduler gave them (caches and memory bandwidth stay
    shared). With ``baseline`` each entry also gets ``median_ratio``, the median over rounds of
    its time over the baseline's in the same round (drift between rounds cancels).
    """
    now = {"wall": time.perf_counter, "thread": time.thread_time}[clock]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = now()
            fn()
            samples[name].append(now() - start)
    out = {name: {**quantiles(s), "clock": clock} for name, s in samples.items()}
    if baseline is not None:
        for name, s in samples.items():
            out[name]["median_ratio"] = statistics.median(a / b for a, b in zip(s, samples[baseline]))
    return out
