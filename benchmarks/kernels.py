"""Kernel benchmarks: speed on CUDA, and the memory-traffic model the kernels are designed against.

    python benchmarks/kernels.py                 # JSON lines on stdout
    python benchmarks/kernels.py --markdown      # the traffic tables of kernels/README.md

Every row is one JSON object. Rows of ``"kind": "traffic"`` hold the traffic model (bytes read and
written in HBM per call, and the time those bytes take at H100 HBM3 bandwidth, 3.35 TB/s):

* ``impl="triton"``: the fused kernels, from their launch plans (``kernels/_segment_norm.py``,
  ``kernels/_tnorm.py`` docstrings), as activation-sized reads and writes; per-channel statistics
  are ignored (they are 1/L of an activation).
* ``impl="eager"``: the PyTorch composition ``timm_reid.layers.functional`` (forward, and the
  backward autograd builds from it), *counted*, not estimated: every aten op it dispatches reads its
  tensor inputs and writes its outputs (views free, broadcast dimensions counted once). Counted on
  CPU at the real shapes (a CUDA run dispatches the same aten ops). For half inputs the reference
  upcasts to fp32, so its bytes are larger than in fp32.
* ``impl="batchnorm2d"``: ``nn.BatchNorm2d`` (cuDNN): forward 2 reads + 1 write, backward 2 reads
  (persistent kernels) to 4 reads (x and dy twice, PyTorch's native two-kernel path) + 1 write;
  ``bytes`` is the low end, ``bytes_high`` the high end.
* ``op="cross_camera_distance"``: the Jaccard kernel at Market-1501 scale, whose floor is the
  ``4 n^2`` output bytes plus one read of the inputs, but whose time is set by arithmetic (see
  kernels/README.md); the eager row is ``timm_reid.cluster.cross_camera_distance``, counted the
  same way at small n and extrapolated along ``a n^2 + b n``.

On a CUDA device it also times every op with ``triton.testing.do_bench`` (median, p20, p80 in ms)
for the Triton kernels, the eager reference and ``nn.BatchNorm2d`` on the same inputs, and reports
achieved GB/s (the row's modelled bytes / median) and % of 3.35 TB/s (``"kind": "timing"``).
Without a GPU it prints the traffic model and a row saying so.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from _common import environment  # benchmarks/_common.py (run as a script from any directory)

HBM_BYTES_PER_S = 3.35e12  # H100 SXM HBM3
# H100 SXM datasheet, dense: used only to say which roof the Jaccard kernel is under.
FP32_FLOPS = 67e12  # CUDA cores, FMA = 2 flops
FP32_SIMPLE_OPS = FP32_FLOPS / 2  # min / add: one op per lane per clock
FP16_TENSOR_FLOPS = 989e12

# (name, shape NCHW, norms of this shape per stage) at 256x128 input, batch 64.
SHAPES = [
    ("resnet50.layer3", (64, 1024, 16, 8), 7),  # bn3 of 6 bottlenecks + downsample BN
    ("convnext_tiny.stage3", (64, 384, 16, 8), 9),  # one norm per block, 9 blocks
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # fp16 moves what bf16 moves
NUM_CAMERAS = 6  # Market-1501

# Fused kernels: (activation reads, activation writes) per element, from the launch plans.
FUSED_PASSES: Dict[Tuple[str, str], Tuple[int, int]] = {
    ("aibn", "forward"): (2, 1),  # stats pass + normalise pass read x; y written once
    ("aibn", "backward"): (4, 1),  # reduction pass + dx pass read x and dy; dx written once
    ("tnorm.update", "forward"): (1, 0),  # training, no convert: stats only, identity output
    ("tnorm.convert", "forward"): (2, 1),  # training conversion: stats pass + affine pass
    ("tnorm.convert", "backward"): (1, 1),  # dx = dy * scale
    ("tnorm.fanout", "forward"): (1, NUM_CAMERAS),  # eval: x read once, one output per camera
}
BATCHNORM_PASSES = {"forward": ((2, 1), (2, 1)), "backward": ((2, 1), (4, 1))}  # (low, high)

# Jaccard at Market-1501 scale: training images, ResNet-50 / ConvNeXt-T feature widths, and the
# score width of 6 cameras x 600 intra-camera clusters (IICS count-based clustering).
JACCARD_N = 12936
JACCARD_FEATURES = [("resnet50", 2048), ("convnext_tiny", 768)]
JACCARD_SCORES = NUM_CAMERAS * 600
JACCARD_TILE = 64  # the BLOCK of the tuned configs (kernels/jaccard.py)


# ----------------------------------------------------------------------------- counting


def _unique_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch for ``t``: broadcast (stride-0) dimensions count once."""
    numel = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            numel *= size
    return numel * t.element_size()


class TrafficCounter(TorchDispatchMode):
    """Sums, over the aten ops dispatched inside it, the bytes of their tensor inputs (reads) and
    outputs (writes). That is the HBM traffic of eager execution, where each op is one or more
    kernels that read their inputs from and write their outputs to global memory."""

    def __init__(self):
        super().__init__()
        self.read = 0
        self.written = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            return out
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        self.read += sum(_unique_bytes(t) for t in inputs)
        self.written += sum(_unique_bytes(t) for t in outputs)
        self.ops += 1
        return out


def _aibn_args(x: torch.Tensor):
    c = x.shape[1]
    dev = x.device
    weight = torch.randn(c, device=dev, requires_grad=True)
    bias = torch.randn(c, device=dev, requires_grad=True)
    gate = torch.full((1,), 0.1, device=dev, requires_grad=True)
    return weight, bias, gate, torch.zeros(c, device=dev), torch.ones(c, device=dev)


def _cameras(n: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    camids = torch.randint(0, NUM_CAMERAS, (n,), generator=g).to(device)
    targets = torch.randint(0, NUM_CAMERAS, (n,), generator=g).to(device)
    return camids, targets


def _tnorm_buffers(c: int, device):
    return torch.zeros(NUM_CAMERAS, c, device=device), torch.ones(NUM_CAMERAS, c, device=device)


def eager_ops(functional, kernels=None) -> Dict[str, Callable]:
    """Builders ``make(x) -> forward closure`` for each op, on one implementation: the functional
    reference, or the Triton kernels when ``kernels`` is given (same signatures)."""
    impl = kernels or functional

    def aibn(x):
        weight, bias, gate, rm, rv = _aibn_args(x)
        return lambda: impl.aibn(x, weight, bias, gate, rm, rv, training=True)

    def tnorm_update(x):
        rm, rv = _tnorm_buffers(x.shape[1], x.device)
        camids, _ = _cameras(x.shape[0], x.device)
        return lambda: impl.tnorm(x, rm, rv, camids=camids, training=True, convert=False)

    def tnorm_convert(x):
        rm, rv = _tnorm_buffers(x.shape[1], x.device)
        camids, targets = _cameras(x.shape[0], x.device)
        return lambda: impl.tnorm(
            x, rm, rv, camids=camids, targets=targets, training=True, convert=True
        )

    def tnorm_fanout(x):
        rm, rv = _tnorm_buffers(x.shape[1], x.device)
        camids, _ = _cameras(x.shape[0], x.device)
        if kernels is not None:
            return lambda: kernels.tnorm_fanout(x, rm, rv, camids)
        full = [torch.full_like(camids, t) for t in range(NUM_CAMERAS)]
        return lambda: torch.stack(
            [functional.tnorm(x, rm, rv, camids=camids, targets=t, training=False, convert=True)
             for t in full]
        )

    return {
        "aibn": aibn,
        "tnorm.update": tnorm_update,
        "tnorm.convert": tnorm_convert,
        "tnorm.fanout": tnorm_fanout,
    }


def count_eager(functional, op: str, shape, dtype) -> Dict[str, Tuple[float, float]]:
    """Eager reads and writes per activation element ``{pass: (reads, writes)}`` in units of the
    activation's element size, counted on CPU at the real shape."""
    n, c, h, w = shape
    x = torch.randn(n, c, h, w).to(dtype).requires_grad_(op in ("aibn", "tnorm.convert"))
    make = eager_ops(functional)[op]
    fwd = make(x)
    unit = x.numel() * x.element_size()
    result = {}
    with TrafficCounter() as counter:
        y = fwd()
    result["forward"] = (counter.read / unit, counter.written / unit)
    if x.requires_grad:
        dy = torch.randn_like(y)
        with TrafficCounter() as counter:
            y.backward(dy)
        result["backward"] = (counter.read / unit, counter.written / unit)
    return result


def count_eager_jaccard(cluster_fn) -> Tuple[float, int]:
    """``(bytes per pair, ops)`` of ``timm_reid.cluster.cross_camera_distance``: counted at two
    small sizes and solved for the ``a n^2`` term (the ``b n`` term is input reads)."""
    totals = []
    for n in (256, 512):
        g = torch.Generator().manual_seed(0)
        f = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
        s = torch.rand(n, 16, generator=g)
        cam = torch.randint(0, NUM_CAMERAS, (n,), generator=g)
        with TrafficCounter() as counter:
            cluster_fn(f, s, cam, 0.02)
        totals.append((n, counter.read + counter.written, counter.ops))
    (n1, b1, _), (n2, b2, ops) = totals
    per_pair = (b2 / n2 - b1 / n1) / (n2 - n1)
    return per_pair, ops


# ----------------------------------------------------------------------------- traffic model


def _bound_us(nbytes: float) -> float:
    return nbytes / HBM_BYTES_PER_S * 1e6


def _row(**kw) -> dict:
    for key in ("bytes", "bytes_high"):
        if key in kw:
            kw[key] = int(round(kw[key]))
    if "bytes" in kw:
        kw["mb"] = round(kw["bytes"] / 1e6, 1)
        kw["bound_us"] = round(_bound_us(kw["bytes"]), 1)
    if "bytes_high" in kw:
        kw["bound_us_high"] = round(_bound_us(kw["bytes_high"]), 1)
    return {"kind": "traffic", "target": "H100 SXM, HBM 3.35 TB/s", **kw}


def norm_traffic_rows(functional) -> Iterator[dict]:
    for name, shape, per_stage in SHAPES:
        numel = math.prod(shape)
        for dtype_name, dtype in DTYPES.items():
            esize = torch.empty((), dtype=dtype).element_size()
            unit = numel * esize
            common = dict(shape=list(shape), model=name, dtype=dtype_name, per_stage=per_stage)
            for pass_, ((rl, wl), (rh, wh)) in BATCHNORM_PASSES.items():
                yield _row(op="batchnorm2d", impl="batchnorm2d", **{"pass": pass_}, **common,
                           reads=rl, writes=wl, bytes=(rl + wl) * unit, bytes_high=(rh + wh) * unit)
            counted = {}
            for (op, pass_), (reads, writes) in FUSED_PASSES.items():
                yield _row(op=op, impl="triton", **{"pass": pass_}, **common, reads=reads,
                           writes=writes, bytes=(reads + writes) * unit)
                if functional is None:
                    continue
                if op not in counted:
                    counted[op] = count_eager(functional, op, shape, dtype)
                if pass_ in counted[op]:
                    reads, writes = counted[op][pass_]
                    yield _row(op=op, impl="eager", **{"pass": pass_}, **common,
                               reads=round(reads, 2), writes=round(writes, 2),
                               bytes=(reads + writes) * unit)


def jaccard_traffic_rows(cluster_fn) -> Iterator[dict]:
    n, s, tile = JACCARD_N, JACCARD_SCORES, JACCARD_TILE
    pairs = n * n
    tiles = -(-n // tile)
    upper_tiles = tiles * (tiles + 1) // 2
    eager = count_eager_jaccard(cluster_fn) if cluster_fn is not None else None
    for model, d in JACCARD_FEATURES:
        for dtype_name, esize in (("float32", 4), ("float16", 2)):
            inputs = n * (d * esize + s * esize + 8)
            out = 4 * pairs
            # Arithmetic of the symmetric kernel (upper triangle only): n^2 d flops for the dot,
            # n^2 s / 2 minima and as many adds for the Jaccard numerator.
            dot_flops = pairs * d
            minsum_ops = pairs * s
            dot_peak = FP32_FLOPS if esize == 4 else FP16_TENSOR_FLOPS
            compute_us = (dot_flops / dot_peak + minsum_ops / FP32_SIMPLE_OPS) * 1e6
            common = dict(op="cross_camera_distance", model=model, n=n, d=d, s=s, dtype=dtype_name)
            yield _row(impl="triton", **common, bytes=inputs + out,
                       tile_rereads_bytes=upper_tiles * 2 * tile * (d + s) * esize,
                       dot_flops=dot_flops, minsum_ops=minsum_ops,
                       compute_bound_us=round(compute_us, 1))
            if eager is not None:
                per_pair, ops = eager
                yield _row(impl="eager", **common, bytes=inputs + per_pair * pairs,
                           bytes_per_pair=round(per_pair, 1), eager_ops_at_n512=ops)


# ----------------------------------------------------------------------------- timing (CUDA)


def _bench(fn, grad_to_none=None) -> Tuple[float, float, float]:
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
    return median, p20, p80


def _timing_row(env, op, impl, pass_, shape, dtype_name, nbytes, times, **extra) -> dict:
    median, p20, p80 = times
    gbps = nbytes / (median * 1e-3) / 1e9
    return {"kind": "timing", **env, "op": op, "impl": impl, "pass": pass_, "shape": list(shape),
            "dtype": dtype_name, "median_ms": round(median, 4), "p20_ms": round(p20, 4),
            "p80_ms": round(p80, 4), "bytes": int(nbytes), "gbps": round(gbps, 1),
            "pct_peak": round(100 * gbps * 1e9 / HBM_BYTES_PER_S, 1), **extra}


def timing_rows(env, traffic, functional, kernels, cluster_fn, jaccard_n: int, *, device="cuda",
                shapes=SHAPES, jaccard_s=JACCARD_SCORES) -> Iterator[dict]:
    """Timing rows; ``traffic`` are the traffic-model rows whose bytes give GB/s."""
    model = {(r["op"], r["impl"], r["pass"], r["model"], r["dtype"]): r["bytes"]
             for r in traffic if r["op"] != "cross_camera_distance"}
    for name, shape, _ in shapes:
        for dtype_name, dtype in DTYPES.items():
            x = torch.randn(shape, device=device, dtype=dtype)
            dy = torch.randn(shape, device=device, dtype=dtype)
            bn = torch.nn.BatchNorm2d(shape[1]).to(device=device, dtype=dtype).train()
            xg = x.clone().requires_grad_(True)
            for pass_ in ("forward", "backward"):
                key = ("batchnorm2d", "batchnorm2d", pass_, name, dtype_name)
                fn = (lambda: bn(x)) if pass_ == "forward" else _fwd_bwd(lambda: bn(xg), dy)
                nbytes = model[key] + (model[key[:2] + ("forward",) + key[3:]] if pass_ == "backward" else 0)
                with torch.no_grad() if pass_ == "forward" else contextlib.nullcontext():
                    bn_times = _bench(fn, grad_to_none=[xg])
                yield _timing_row(env, "batchnorm2d", "batchnorm2d", _pass_name(pass_), shape,
                                  dtype_name, nbytes, bn_times)
                if pass_ == "forward":
                    bn_forward = bn_times[0]
                else:
                    bn_full = bn_times[0]
            for op in ("aibn", "tnorm.update", "tnorm.convert", "tnorm.fanout"):
                has_backward = (op, "backward") in FUSED_PASSES
                medians = {}
                for impl, source in (("eager", functional), ("triton", kernels)):
                    if source is None:
                        continue
                    builders = eager_ops(functional, kernels if impl == "triton" else None)
                    for pass_ in ("forward", "backward") if has_backward else ("forward",):
                        xin = xg if pass_ == "backward" else x
                        fwd = builders[op](xin)
                        fn = fwd if pass_ == "forward" else _fwd_bwd(fwd, dy)
                        nbytes = model.get((op, impl, "forward", name, dtype_name), 0)
                        if pass_ == "backward":
                            nbytes += model.get((op, impl, "backward", name, dtype_name), 0)
                        with torch.no_grad() if pass_ == "forward" else contextlib.nullcontext():
                            times = _bench(fn, grad_to_none=[xg] if pass_ == "backward" else None)
                        medians[(impl, pass_)] = times[0]
                        extra = {}
                        if impl == "triton":
                            eager_ms = medians.get(("eager", pass_))
                            if eager_ms:
                                extra["speedup_vs_eager"] = round(eager_ms / times[0], 2)
                            if op == "aibn":
                                ref = bn_forward if pass_ == "forward" else bn_full
                                extra["speedup_vs_batchnorm2d"] = round(ref / times[0], 2)
                        yield _timing_row(env, op, impl, _pass_name(pass_), shape, dtype_name,
                                          nbytes, times, **extra)
    try:
        from timm_reid.kernels import jaccard
    except ImportError:
        return
    yield from _jaccard_timing(env, jaccard, cluster_fn, jaccard_n, jaccard_s, device)


def _jaccard_timing(env, kernels, cluster_fn, n, s, device) -> Iterator[dict]:
    for model, d in JACCARD_FEATURES:
        for dtype_name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
            g = torch.Generator(device=device).manual_seed(0)
            f = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
            scores = torch.rand(n, s, device=device, generator=g).to(dtype)
            f = f.to(dtype)
            cam = torch.randint(0, NUM_CAMERAS, (n,), device=device, generator=g)
            nbytes = n * (d + s) * f.element_size() + 8 * n + 4 * n * n
            ops = n * n * (d + s)
            out = torch.empty(n, n, device=device)
            times = _bench(lambda: kernels.cross_camera_distance(f, scores, cam, 0.02, out=out))
            extra = {"n": n, "d": d, "s": s, "tops": round(ops / (times[0] * 1e-3) / 1e12, 2)}
            if cluster_fn is not None:
                eager = _bench(lambda: cluster_fn(f.float(), scores.float(), cam, 0.02))
                yield _timing_row(env, "cross_camera_distance", "eager", "forward", (n, n),
                                  dtype_name, nbytes, eager, n=n, d=d, s=s)
                extra["speedup_vs_eager"] = round(eager[0] / times[0], 2)
            yield _timing_row(env, "cross_camera_distance", "triton", "forward", (n, n),
                              dtype_name, nbytes, times, **extra)


def _fwd_bwd(fwd, dy):
    def run():
        fwd().backward(dy)

    return run


def _pass_name(pass_: str) -> str:
    return "forward" if pass_ == "forward" else "forward+backward"


# ----------------------------------------------------------------------------- output


def markdown(rows: List[dict]) -> str:
    """The traffic tables of kernels/README.md, from the same rows."""
    lines = []
    norm = [r for r in rows if r["op"] != "cross_camera_distance"]
    for name, shape, per_stage in SHAPES:
        lines.append(f"\n**{name}** `{tuple(shape)}`, {per_stage} norms of this shape per stage\n")
        lines.append("| op | pass | impl | reads + writes / element | MB fp32 | us @ 3.35 TB/s fp32 "
                     "| MB bf16 | us bf16 |")
        lines.append("|---|---|---|---|---|---|---|---|")
        by_key = {}
        for r in norm:
            if r["model"] == name:
                by_key.setdefault((r["op"], r["pass"], r["impl"]), {})[r["dtype"]] = r
        for (op, pass_, impl), per_dtype in by_key.items():
            f32, b16 = per_dtype["float32"], per_dtype["bfloat16"]

            def fmt(r, key):
                if "bytes_high" in r and r["bytes_high"] != r["bytes"]:
                    high = "mb" if key == "mb" else "bound_us_high"
                    hi = r["bytes_high"] / 1e6 if key == "mb" else r[high]
                    return f"{r[key]:.1f}-{hi:.1f}"
                return f"{r[key]:.1f}"

            if impl == "batchnorm2d" and f32.get("bytes_high", 0) != f32["bytes"]:
                passes = f"{f32['reads']}-{f32['reads'] + 2} + {f32['writes']}"
            else:
                passes = f"{f32['reads']} + {f32['writes']}"
                if impl == "eager" and b16["reads"] != f32["reads"]:
                    passes += f" (bf16: {b16['reads']} + {b16['writes']})"
            lines.append(f"| {op} | {pass_} | {impl} | {passes} | {fmt(f32, 'mb')} | "
                         f"{fmt(f32, 'bound_us')} | {fmt(b16, 'mb')} | {fmt(b16, 'bound_us')} |")
    jac = [r for r in rows if r["op"] == "cross_camera_distance"]
    if jac:
        lines.append(f"\n**cross_camera_distance**, n = {JACCARD_N}, s = {JACCARD_SCORES}\n")
        lines.append("| features | dtype | impl | HBM MB | us @ 3.35 TB/s | tile re-reads MB (L2) "
                     "| compute-bound us |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in jac:
            rereads = f"{r['tile_rereads_bytes'] / 1e6:.0f}" if "tile_rereads_bytes" in r else "-"
            compute = f"{r['compute_bound_us']:.0f}" if "compute_bound_us" in r else "-"
            lines.append(f"| {r['model']} d={r['d']} | {r['dtype']} | {r['impl']} | "
                         f"{r['mb']:.0f} | {r['bound_us']:.0f} | {rereads} | {compute} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the README tables")
    parser.add_argument("--jaccard-n", type=int, default=8192, help="n for the CUDA Jaccard timing")
    parser.add_argument("--no-eager-count", action="store_true",
                        help="skip counting the eager composition's traffic")
    args = parser.parse_args(argv)

    functional = cluster_fn = kernels = None
    notes = []
    if not args.no_eager_count:
        try:
            from timm_reid.layers import functional
        except ImportError as exc:  # the benchmark stays useful while the package is incomplete
            notes.append(f"eager reference unavailable: {exc}")
        try:
            from timm_reid.cluster.cross_camera import cross_camera_distance as cluster_fn
        except ImportError as exc:
            notes.append(f"eager cross_camera_distance unavailable: {exc}")

    cuda = torch.cuda.is_available()
    env = environment()  # device, threads, python, torch (shared with the other benchmarks)
    try:
        import triton

        env["triton"] = triton.__version__
        if cuda:
            import timm_reid.kernels as kernels
    except ImportError as exc:
        notes.append(f"Triton kernels unavailable: {exc}")

    rows = list(norm_traffic_rows(functional)) + list(jaccard_traffic_rows(cluster_fn))
    if args.markdown:
        print(markdown(rows))
        return 0

    def emit(row: dict) -> None:
        print(json.dumps({**row, **env}), flush=True)

    emit({"kind": "environment", "cuda": cuda, "hbm_bytes_per_s": HBM_BYTES_PER_S,
          "notes": notes})
    for row in rows:
        emit(row)
    if not cuda:
        emit({"kind": "note", "message": "no CUDA device found: printed the traffic model only; "
              "timings need a GPU (run this script on one)"})
        return 0
    torch.backends.cudnn.benchmark = True
    for row in timing_rows(env, rows, functional, kernels, cluster_fn, args.jaccard_n):
        emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
