"""GPU check in one command: the Triton kernels compiled and run on one CUDA GPU.

    PYTHONPATH=. python benchmarks/gpu_check.py --out gpu_check.json

Runs from a checkout of the repository, without installing it (it registers ``kernels/`` as the
package ``timm_reid.kernels`` itself, as pyproject's package-dir would) and without a package
index. It needs: python >= 3.10, torch (CUDA build; checked with 2.11 and 2.14), triton (3.6 or
3.8), timm, numpy, scipy, scikit-learn, safetensors, PyYAML, Pillow and pytest (+ hypothesis for the
property-based kernel tests; without it those test files are reported as not run). Nothing is
downloaded: models are built with random weights.

Stages, each with its own time budget (the whole check is sized for < 10 minutes on one H100/H200):

1. ``tests``: ``tests/kernels/test_aibn.py`` and ``tests/kernels/test_tnorm.py`` with *compiled*
   Triton (``TRITON_INTERPRET`` unset), in a subprocess. The tests build CPU tensors; a shim moves
   every tensor argument of ``timm_reid.kernels.aibn`` / ``tnorm`` / ``tnorm_fanout`` to the GPU
   and the results back (autograd flows through the copies, in-place running-statistics updates
   are copied back), so the compiled kernels are compared with the CPU reference math at the
   tests' own tolerances. Tests that need the interpreter (module tests on CPU tensors, the
   gloo-distributed tests, the Jaccard tests) are not part of this stage.
2. ``layers``: AIBN, TNorm and BlendedAIBN (LayerNorm and BatchNorm base) modules with
   ``backend="triton"`` against ``backend="reference"`` on CUDA tensors (NCHW and the NHWC view,
   fp32 and bf16): output, input and parameter gradients, running statistics; and ``torch.compile`` of a small AIBN + TNorm stack.
3. ``kernels``: ``benchmarks/kernels.py`` timings (``triton.testing.do_bench``: median, p20, p80)
   of the AIBN / TNorm kernels against the eager reference and ``nn.BatchNorm2d`` at the
   ResNet-50 layer3 and ConvNeXt-T stage-3 shapes, and of the Jaccard distance kernel, with the
   achieved bandwidth against the traffic model of ``kernels/README.md``.
4. ``training``: a few SGD steps of a patched ResNet-50 and ConvNeXt-T at 256x128 (random
   weights, batch of mixed cameras, TNorm conversion on) with the Triton backend and with the
   reference backend from the same initial state: losses per step (they must agree) and the
   median step-time ratio.
5. ``paths``: the paths added for speed, timed where they run on a GPU: ICE's clustering step
   (sparse Jaccard graph + DBSCAN) with the k-NN top-k on the GPU at MSMT17 size (32,621 planted
   2048-d features) and its partition against the CPU run at 4,000 (adjusted Rand index >= 0.99
   passes); a training step of ResNet-50 and ConvNeXt-T with ``entry="blend"`` (blend weight 0.3)
   on the Triton backend and on the fused torch path, against the unpatched model; the fused blend
   op (``timm_reid.kernels.blend``) against the composition it replaces (AIBN kernels + base norm +
   ``lerp``), forward + backward at the ResNet-50 layer3 (BatchNorm base) and ConvNeXt-T stage-3
   (LayerNorm base, NHWC) shapes in fp32 and bf16, with achieved GB/s of the traffic model; the
   AIBN torch path against ``nn.BatchNorm2d`` at the ResNet layer3 shape.

Output: one JSON object in ``--out`` (written atomically; an existing file is not overwritten):
``{"environment": ..., "stages": {name: {"ok": bool, "seconds": float, ...}}, "ok": bool}``.
Exit status 0 when every stage passed, 1 when one failed, 2 for a bad command line. Without a
CUDA device it prints "no CUDA device" and exits 0 (nothing to check on this machine).

Triton API use checked against 3.6 and 3.8: ``autotune(prune_configs_by={"early_config_prune":
f})`` is called as ``f(configs, named_args, **kwargs)`` in both; ``tl.dot(input_precision=)``,
``tl.debug_barrier``, ``tl.cast`` and ``triton.testing.do_bench(quantiles=, grad_to_none=)`` exist
in both; the ops use ``torch.library.triton_op`` / ``wrap_triton`` (torch >= 2.6).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/kernels/test_aibn.py", "tests/kernels/test_tnorm.py"]
# Seconds per stage, and for the whole check (--budget): a stage that would start with less than
# a minute left is skipped, one that runs over its share is interrupted; both are reported.
BUDGET_S = {"tests": 180, "layers": 60, "kernels": 120, "training": 120, "paths": 120}
TOTAL_BUDGET_S = 570


class StageTimeout(Exception):
    pass


# ----------------------------------------------------------------------------- setup


def ensure_importable() -> None:
    """Make ``import timm_reid`` and ``import timm_reid.kernels`` work from a bare checkout.

    pyproject maps the top-level ``kernels/`` folder to ``timm_reid.kernels``; without an install
    that mapping does not exist, so the folder is registered under that name here, before
    ``timm_reid`` (whose layers import ``timm_reid.kernels._contract``) is imported.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("timm_reid") is None:
        raise SystemExit(f"gpu_check: timm_reid not found; run from the repository: PYTHONPATH={REPO}")
    if "timm_reid.kernels" in sys.modules:
        return
    try:
        if importlib.util.find_spec("timm_reid.kernels") is not None:
            return  # installed (pip install -e . or a wheel)
    except ImportError:
        pass  # `import timm_reid` itself failed: its kernels import is what is missing
    spec = importlib.util.spec_from_file_location(
        "timm_reid.kernels", REPO / "kernels" / "__init__.py", submodule_search_locations=[str(REPO / "kernels")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["timm_reid.kernels"] = module
    spec.loader.exec_module(module)
    import timm_reid

    timm_reid.kernels = module  # what the import system sets for an installed subpackage


def environment() -> Dict[str, object]:
    import torch

    env: Dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                              "cuda_runtime": torch.version.cuda}
    for name in ("triton", "timm", "numpy", "scipy", "sklearn", "hypothesis", "pytest"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
    return env


def write_json(path: Path, obj: dict) -> None:
    """Atomic write: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def light_autotune() -> None:
    """Shorter autotune benchmarking (warmup 2 ms, rep 10 ms per config instead of 25 / 100): the
    check autotunes dozens of (kernel, shape) keys and must fit its time budget. Config choice gets
    noisier, the kernels' results do not change."""
    import triton
    from triton.runtime.autotuner import Autotuner

    import timm_reid.kernels._segment_norm  # noqa: F401  (every kernel module)
    import timm_reid.kernels._tnorm  # noqa: F401
    import timm_reid.kernels.jaccard  # noqa: F401

    def bench(kernel_call, quantiles):
        return triton.testing.do_bench(kernel_call, warmup=2, rep=10, quantiles=quantiles)

    for name, module in list(sys.modules.items()):
        if name.startswith("timm_reid.kernels"):
            for obj in vars(module).values():
                if isinstance(obj, Autotuner) and hasattr(obj, "_do_bench"):
                    obj._do_bench = bench
                    obj.__dict__.pop("do_bench", None)  # a cached_property in triton 3.x


def timed(name: str, fn: Callable[[], dict], report: dict, seconds: int) -> None:
    """Run one stage with an alarm after ``seconds``; its dict (or the exception) goes into
    ``report["stages"][name]``."""
    import signal

    print(f"gpu_check: {name} (at most {seconds} s) ...", flush=True)
    start = time.perf_counter()

    def on_alarm(signum, frame):
        raise StageTimeout(f"stage {name!r} ran over its {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        result = fn()
    except Exception as e:  # a failing stage must not hide the others
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:4000]}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    result["seconds"] = round(time.perf_counter() - start, 1)
    report["stages"][name] = result
    print(f"gpu_check: {name} {'ok' if result.get('ok') else 'FAILED'} in {result['seconds']} s", flush=True)


# ----------------------------------------------------------------------------- stage 1: tests


def stage_tests(seconds: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_INTERPRET"] = "0"  # the test modules only setdefault it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_pytest", *TEST_FILES]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds - 5)
    except subprocess.TimeoutExpired as e:
        tail = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"ok": False, "error": f"timed out after {seconds - 5} s", "output_tail": tail[-3000:]}
    summary = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    return {"ok": proc.returncode == 0, "returncode": proc.returncode, "summary": summary[-3:],
            "output_tail": (proc.stdout + proc.stderr)[-4000:] if proc.returncode else ""}


def _cuda_shim(fn: Callable, device: str = "cuda") -> Callable:
    """``fn`` with every CPU tensor argument moved to ``device`` and the results moved back."""
    import torch
    from torch.utils._pytree import tree_map

    def run(*args, **kwargs):
        moved = []

        def to_cuda(t):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                c = t.to(device, copy=True)  # differentiable: gradients reach the CPU leaf
                moved.append((t, c))
                return c
            return t

        out = fn(*[to_cuda(a) for a in args], **{k: to_cuda(v) for k, v in kwargs.items()})
        with torch.no_grad():
            for orig, c in moved:  # in-place updates (running statistics) come back
                if not orig.requires_grad and not torch.equal(orig, back_cpu := c.cpu()):
                    orig.copy_(back_cpu)

        def back(o):
            if isinstance(o, torch.Tensor):
                for orig, c in moved:
                    if o is c:
                        return orig  # identity outputs stay identity (`tnorm(x, ...) is x`)
                return o.to("cpu", copy=True)
            return o

        return tree_map(back, out)

    return run


def run_pytest(files: List[str]) -> int:
    """In the subprocess of :func:`stage_tests`: the test files with the CUDA shim installed."""
    import types

    import pytest

    ensure_importable()
    import tests.utils as test_utils
    import timm_reid.kernels as kernels
    from timm_reid.kernels import _utils

    assert not _utils.INTERPRET, "TRITON_INTERPRET must be off for the GPU check"
    light_autotune()
    shim = types.SimpleNamespace(**{name: _cuda_shim(getattr(kernels, name)) for name in ("aibn", "tnorm", "tnorm_fanout")})
    test_utils.import_interpreted_kernels = lambda: shim
    return int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *files]))


# ----------------------------------------------------------------------------- stage 2: layers


def _module_case(layer_fn, x, dy, camids, targets):
    import torch

    layer = layer_fn()
    xin = x.clone().requires_grad_(True)
    y = layer(xin) if camids is None else layer(xin, camids, convert=targets is not None, targets=targets)
    y.backward(dy)
    grads = {"x": xin.grad}
    grads.update({f"d{name}": p.grad for name, p in layer.named_parameters()})
    return y.detach(), grads, {k: v.clone() for k, v in layer.named_buffers()}, torch.isfinite(y).all().item()


def stage_layers() -> dict:
    import torch

    from timm_reid.layers import AIBN, BlendedAIBN, TNorm

    torch.manual_seed(0)
    rows, ok = [], True
    for dtype in (torch.float32, torch.bfloat16):
        tol = 2e-4 if dtype == torch.float32 else 3e-2
        for channels_last in (False, True):
            shape = (16, 12, 10, 96) if channels_last else (16, 96, 12, 10)
            x = torch.randn(shape, device="cuda").to(dtype)
            dy = torch.randn(shape, device="cuda").to(dtype)
            camids = torch.arange(16, device="cuda") % 3
            targets = (camids + 1) % 3
            cases = {
                "aibn": (lambda b: AIBN(96, channels_last=channels_last, backend=b, gate_init=0.3), None, None),
                "tnorm.convert": (lambda b: TNorm(96, 3, channels_last=channels_last, backend=b), camids, targets),
                "tnorm.normalize": (lambda b: TNorm(96, 3, mode="normalize", channels_last=channels_last, backend=b),
                                    camids, None),
                # the fused blend op (triton) against BlendFunction / the composition (reference)
                "blend.layernorm": (lambda b: BlendedAIBN(96, base="layernorm", blend_init=0.3, gate_init=0.3,
                                                          channels_last=channels_last, backend=b), None, None),
            }
            if not channels_last:  # a BatchNorm base is an NCHW layer
                cases["blend.batchnorm"] = (lambda b: BlendedAIBN(96, base="batchnorm", blend_init=0.3, gate_init=0.3,
                                                                  backend=b), None, None)
            for op, (make, cam, tgt) in cases.items():
                got = _module_case(lambda: make("triton").cuda().train(), x, dy, cam, tgt)
                if op.startswith("blend"):  # the composition in bf16 rounds each branch: fp32 reference
                    ref = _module_case(lambda: make("reference").cuda().train(), x.float(), dy.float(), cam, tgt)
                else:
                    ref = _module_case(lambda: make("reference").cuda().train(), x, dy, cam, tgt)
                errs = {"y": _rel(got[0], ref[0])}
                errs.update({k: _rel(got[1][k], ref[1][k]) for k in ref[1] if ref[1][k] is not None})
                errs.update({k: _rel(got[2][k], ref[2][k]) for k in ref[2]})
                passed = got[3] and all(e <= tol for e in errs.values())
                ok &= passed
                rows.append({"op": op, "dtype": str(dtype).replace("torch.", ""), "channels_last": channels_last,
                             "max_rel_err": {k: float(f"{v:.3g}") for k, v in errs.items()}, "ok": passed})
    result = {"ok": ok, "cases": rows, "tolerance": {"float32": 2e-4, "bfloat16": 3e-2}}
    try:
        result["compile"] = _compile_check()
        result["ok"] = result["ok"] and result["compile"]["ok"]
    except Exception as e:
        result["compile"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        result["ok"] = False
    return result


def _rel(a, b) -> float:
    """max |a - b| / max(1, max |b|): relative to the tensor's scale, robust to zeros."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def _compile_check() -> dict:
    import torch
    from torch import nn

    from timm_reid.layers import AIBN, TNorm

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.aibn = AIBN(32, backend="triton")
            self.tnorm = TNorm(32, 3, backend="triton")

        def forward(self, x, camids, targets):
            return self.tnorm(self.aibn(x), camids, convert=True, targets=targets)

    eager = Stack().cuda().train()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module)
    x = torch.randn(8, 32, 16, 8, device="cuda")
    camids = torch.arange(8, device="cuda") % 3
    targets = (camids + 2) % 3
    errs = []
    for _ in range(2):
        errs.append(_rel(compiled(x, camids, targets), eager(x, camids, targets)))
    return {"ok": max(errs) <= 1e-4, "max_rel_err": max(errs)}


# ----------------------------------------------------------------------------- stage 3: kernels


def stage_kernels(jaccard_n: int) -> dict:
    import torch

    spec = importlib.util.spec_from_file_location("timm_reid_bench_kernels", REPO / "benchmarks" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))  # its `from _common import environment`
    spec.loader.exec_module(bench)
    import timm_reid.kernels as kernels
    from timm_reid.cluster.cross_camera import cross_camera_distance as cluster_fn
    from timm_reid.layers import functional

    torch.backends.cudnn.benchmark = True
    traffic = list(bench.norm_traffic_rows(functional))
    env = {"device": torch.cuda.get_device_name()}
    rows = list(bench.timing_rows(env, traffic, functional, kernels, cluster_fn, jaccard_n))
    keep = ("op", "impl", "pass", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "bytes", "gbps", "pct_peak",
            "speedup_vs_eager", "speedup_vs_batchnorm2d", "tops", "n", "d", "s")
    rows = [{k: r[k] for k in keep if k in r} for r in rows]
    return {"ok": bool(rows), "hbm_bytes_per_s_model": bench.HBM_BYTES_PER_S,
            "note": "pct_peak is against the H100 SXM figure of kernels/README.md (3.35 TB/s); "
                    "an H200 has 4.8 TB/s", "timings": rows}


# ----------------------------------------------------------------------------- stage 4: training


def _patched(name: str):
    import timm

    import timm_reid

    model = timm.create_model(name, pretrained=False, num_classes=0)
    return timm_reid.patch(model, aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=6)


def _train(model, batches, head, backend: str, steps: int) -> dict:
    import torch

    from timm_reid.layers import use_backend

    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    losses, times = [], []
    with use_backend(backend):
        for i in range(steps):
            x, camids, labels, targets = batches[i % len(batches)]
            torch.cuda.synchronize()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            feats = model(x, camids=camids, convert=True, targets=targets)
            loss = torch.nn.functional.cross_entropy(head(feats), labels)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    return {"losses": losses, "times": times}


def stage_training(steps: int, batch: int) -> dict:
    import torch

    results, ok = {}, True
    for name in ("resnet50", "convnext_tiny"):
        try:
            results[name] = _train_both(name, steps, batch)
        except StageTimeout as e:  # keep what the first model measured
            results[name] = {"ok": False, "error": str(e)}
            return {"ok": False, "models": results}
        ok &= results[name]["ok"]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"ok": ok, "models": results}


def _train_both(name: str, steps: int, batch: int) -> dict:
    """Both backends from the same initial state; the warm-up steps (compilation, autotuning) run
    on copies and are timed separately."""
    import torch

    torch.manual_seed(0)
    model = _patched(name).cuda().train()
    head = torch.nn.Linear(model.num_features, 100).cuda()
    g = torch.Generator(device="cuda").manual_seed(1)
    batches = []
    for _ in range(2):
        camids = torch.arange(batch, device="cuda") % 6
        batches.append((torch.randn(batch, 3, 256, 128, device="cuda", generator=g), camids,
                        torch.randint(0, 100, (batch,), device="cuda", generator=g), (camids + 1) % 6))
    runs, warmup = {}, {}
    for backend in ("triton", "reference"):
        start = time.perf_counter()
        _train(copy.deepcopy(model), batches, copy.deepcopy(head), backend, 2)
        warmup[backend] = round(time.perf_counter() - start, 2)
        runs[backend] = _train(copy.deepcopy(model), batches, copy.deepcopy(head), backend, steps)
    tri, ref = runs["triton"], runs["reference"]
    rel = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(tri["losses"], ref["losses"]))
    t_tri, t_ref = statistics.median(tri["times"][1:]), statistics.median(ref["times"][1:])
    passed = rel <= 2e-3  # fp32 throughout; the convolutions are the same cuDNN calls on both sides
    return {
        "ok": passed, "batch": batch, "input": [256, 128], "steps": steps,
        "losses_triton": tri["losses"], "losses_reference": ref["losses"], "max_rel_loss_diff": rel,
        "median_step_ms_triton": round(1e3 * t_tri, 2), "median_step_ms_reference": round(1e3 * t_ref, 2),
        "time_ratio_triton_over_reference": round(t_tri / t_ref, 3),
        "warmup_s_2_steps": warmup, "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


# ----------------------------------------------------------------------------- stage 5: new paths


def _median_ms(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up (allocator, cuBLAS handles, autotuning)
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


def _ice_clustering(device: str, n: int, agreement_n: int) -> dict:
    """ICE's clustering step (sparse Jaccard graph + DBSCAN) with the k-NN top-k on `device`, and
    its partition against the same step on CPU features (adjusted Rand index; cuBLAS and the CPU
    BLAS round differently, so the partitions can differ at near-ties)."""
    import torch
    from sklearn.metrics import adjusted_rand_score

    from timm_reid.cluster import dbscan_jaccard

    def planted(size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        centres = torch.randn(max(1, size // 17), 2048, generator=gen)
        feats = centres[torch.randint(0, centres.shape[0], (size,), generator=gen)] + 0.9 * torch.randn(size, 2048, generator=gen)
        return torch.nn.functional.normalize(feats, dim=1)

    feats = planted(n).to(device)
    start = time.perf_counter()
    labels = dbscan_jaccard(feats)
    seconds = time.perf_counter() - start
    small = planted(agreement_n, seed=1)
    here, cpu = dbscan_jaccard(small.to(device)), dbscan_jaccard(small)
    ari = float(adjusted_rand_score(cpu, here))
    return {"ok": ari >= 0.99, "n": n, "seconds": round(seconds, 2), "clusters": int(labels.max()) + 1,
            "agreement_n": agreement_n, "ari_vs_cpu": ari, "same_partition_as_cpu": bool((cpu == here).all())}


def _blend_steps(device: str, models, batch: int, image, reps: int, sync) -> dict:
    """Training step of the unpatched model against entry="blend" with the Triton backend (the fused
    blend op, ``timm_reid.kernels.blend``) and with the reference backend (the fused torch Function)."""
    import torch

    import timm

    import timm_reid
    from timm_reid.layers import BlendedAIBN, use_backend

    out = {}
    for name in models:
        torch.manual_seed(0)
        base = timm.create_model(name, pretrained=False, num_classes=0).to(device).train()
        blend = timm_reid.patch(copy.deepcopy(base), aibn=[3, 4], entry="blend").train()
        for m in blend.modules():
            if isinstance(m, BlendedAIBN):
                m.blend.data.fill_(0.3)  # moved off 0, as after some training
        x = torch.randn(batch, 3, *image, device=device)

        def step(model):
            model.zero_grad(set_to_none=True)
            model(x).float().pow(2).mean().backward()

        row = {"unpatched_ms": _median_ms(lambda: step(base), reps, sync)}
        for backend in ("triton", "reference"):
            if backend == "triton" and device == "cpu":
                continue
            with use_backend(backend):
                row[f"blend_{backend}_ms"] = _median_ms(lambda: step(blend), reps, sync)
            row[f"blend_{backend}_over_unpatched"] = round(row[f"blend_{backend}_ms"] / row["unpatched_ms"], 3)
        out[name] = row
    return out


# (name, base, shape, channels_last layer, activation passes of a training step: composed, fused), the
# rows of kernels/README.md "The blended entry"
BLEND_SHAPES = (
    ("resnet50.layer3", "batchnorm", (64, 1024, 16, 8), False, 27, 8),
    ("convnext_tiny.stage3", "layernorm", (64, 16, 8, 384), True, 26, 8),
)


def _blend_op(device: str, reps: int, sync, shapes=BLEND_SHAPES, require_cuda: bool = True) -> dict:
    """The fused blend op against the composition it replaces (the Triton AIBN kernels, the base norm
    through PyTorch, ``lerp``), one training step's forward + backward on the same layer and input;
    GB/s from the traffic model (activation passes x bytes / median). ``require_cuda=False`` lets it
    run on CPU under TRITON_INTERPRET=1 (tiny shapes; a check of this function, not a timing)."""
    if require_cuda and not device.startswith("cuda"):
        return {"skipped": "the Triton kernels need a CUDA device"}
    import torch
    import torch.nn.functional as F

    import timm_reid.kernels as kernels
    from timm_reid.layers import BlendedAIBN

    rows = []
    for name, base, shape, channels_last, composed_passes, fused_passes in shapes:
        c = shape[-1] if channels_last else shape[1]
        for dtype in (torch.float32, torch.bfloat16):
            layer = BlendedAIBN(c, base=base, channels_last=channels_last, backend="triton")
            layer = layer.to(device=device, dtype=dtype).train()
            layer.blend.data.fill_(0.3)
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            dy = torch.randn(shape, device=device, dtype=dtype)

            def fused():
                x.grad = None
                layer(x).backward(dy)

            def composed():
                x.grad = None
                adaptive = kernels.aibn(x, layer.weight, layer.bias, layer.gate, layer.running_mean,
                                        layer.running_var, training=True, channels_last=channels_last)
                if base == "batchnorm":
                    ref = F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
                else:
                    ref = F.layer_norm(x, (c,), layer.weight, layer.bias, layer.eps)
                torch.lerp(ref, adaptive, layer.blend_weight().to(dtype)).backward(dy)

            with torch.no_grad():
                ref_y = torch.lerp(
                    F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
                    if base == "batchnorm" else F.layer_norm(x, (c,), layer.weight, layer.bias, layer.eps),
                    kernels.aibn(x, layer.weight, layer.bias, layer.gate, None, None, training=True,
                                 channels_last=channels_last), layer.blend_weight().to(dtype))
                got_y = layer(x)
            row = {"op": name, "base": base, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                   "max_rel_err_y": _rel(got_y, ref_y),
                   "fused_ms": _median_ms(fused, reps, sync), "composed_ms": _median_ms(composed, reps, sync)}
            elem = x.numel() * x.element_size()
            row["fused_gbps"] = round(fused_passes * elem / row["fused_ms"] / 1e6, 1)
            row["composed_gbps"] = round(composed_passes * elem / row["composed_ms"] / 1e6, 1)
            row["speedup"] = round(row["composed_ms"] / row["fused_ms"], 3)
            rows.append(row)
    return {"rows": rows, "ok": all(r["max_rel_err_y"] <= (2e-4 if r["dtype"] == "float32" else 3e-2) for r in rows),
            "note": "GB/s from the traffic model of kernels/README.md (activation passes per training step)"}


def _aibn_torch_path(device: str, reps: int, sync, shape=(64, 1024, 16, 8)) -> dict:
    """The torch path of AIBN (one autograd Function) against nn.BatchNorm2d, forward + backward."""
    import torch

    from timm_reid.layers import AIBN, use_backend

    x = torch.randn(shape, device=device, requires_grad=True)
    dy = torch.randn(shape, device=device)
    bn, aibn = torch.nn.BatchNorm2d(shape[1]).to(device), AIBN(shape[1]).to(device)

    def step(layer):
        x.grad = None
        layer(x).backward(dy)

    with use_backend("reference"):
        row = {"shape": list(shape), "batchnorm2d_ms": _median_ms(lambda: step(bn), reps, sync),
               "aibn_torch_ms": _median_ms(lambda: step(aibn), reps, sync)}
    row["aibn_torch_over_batchnorm2d"] = round(row["aibn_torch_ms"] / row["batchnorm2d_ms"], 3)
    return row


def stage_paths(device: str = "cuda", cluster_n: int = 32_621, agreement_n: int = 4_000, batch: int = 32,
                image=(256, 128), models=("resnet50", "convnext_tiny"), reps: int = 5) -> dict:
    """Times the paths added for CPU speed where they also run on a GPU: ICE clustering with the
    k-NN top-k on the GPU at MSMT17 size, the blended-norm training step (Triton and fused torch
    path), the fused blend op against its composition (CUDA only), and the AIBN torch path against
    BatchNorm2d. Runs on CPU too (at small sizes, tested; the blend op row says it was skipped)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ice = _ice_clustering(device, cluster_n, agreement_n)
    try:
        blend_op = _blend_op(device, 4 * reps, sync)
    except Exception as e:  # keep the other measurements of the stage
        blend_op = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    return {"ok": ice["ok"] and blend_op.get("ok", True), "device": device, "ice_clustering": ice,
            "blend_training_step": _blend_steps(device, models, batch, image, reps, sync),
            "blend_op": blend_op, "aibn_torch_path": _aibn_torch_path(device, reps, sync)}


# ----------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description="Compile and run the timm-reid Triton kernels on one CUDA GPU.",
        allow_abbrev=False,
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report (default: %(default)s)")
    parser.add_argument("--stages", default="tests,layers,kernels,training,paths",
                        help="comma-separated subset of tests,layers,kernels,training,paths (default: all)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per backend (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--jaccard-n", type=int, default=4096, help="n of the Jaccard timing (default: %(default)s)")
    parser.add_argument("--budget", type=int, default=TOTAL_BUDGET_S,
                        help="seconds for the whole check (default: %(default)s)")
    parser.add_argument("--_pytest", nargs="+", help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args._pytest:
        return run_pytest(args._pytest)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(BUDGET_S))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(BUDGET_S)}")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose another file or remove it (reports are never overwritten)")
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device found (torch.cuda.is_available() is False): nothing to check on this "
              "machine; run it on a machine with one CUDA GPU. Exit status 0.", flush=True)
        return 0
    ensure_importable()
    light_autotune()
    report = {"environment": environment(), "stages": {}, "command": sys.argv,
              "autotune": "light (warmup 2 ms, rep 10 ms per config)"}
    deadline = time.perf_counter() + args.budget
    for name in stages:
        left = int(deadline - time.perf_counter())
        if left < 60:
            report["stages"][name] = {"ok": False, "skipped": f"time budget: {left} s left of {args.budget}"}
            continue
        seconds = min(BUDGET_S[name], left)
        plan = {
            "tests": lambda: stage_tests(seconds),
            "layers": stage_layers,
            "kernels": lambda: stage_kernels(args.jaccard_n),
            "training": lambda: stage_training(args.steps, args.batch),
            "paths": lambda: stage_paths(batch=args.batch),
        }
        timed(name, plan[name], report, seconds)
        write_json(args.out, report)  # partial results survive a later crash or timeout
    report["ok"] = all(s.get("ok") for s in report["stages"].values())
    write_json(args.out, report)
    print(f"gpu_check: {'all stages passed' if report['ok'] else 'FAILED'}; report in {args.out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
