"""Compile every AIBN/TNorm/blend kernel variant for an H100 (sm_90) without a GPU.

Run as a script in a process *without* TRITON_INTERPRET (``test_gpu_compile.py`` does), so the
kernels are real ``JITFunction``s: Triton lowers them to TTIR, TTGIR, LLVM IR, PTX and (with the
bundled ptxas) cubin. This catches what the interpreter cannot: static typing of loop-carried
values, constexpr branches, fp64 scalars as Inductor passes them. Prints one line per variant,
``OK`` or ``FAIL`` with the compiler message (the blend kernels' lines add ``ptxas -v``'s register
and spill counts for sm_90a); exits 1 on any failure.
"""
import importlib
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

S = importlib.import_module("timm_reid.kernels._stats")
P = importlib.import_module("timm_reid.kernels._apply")
B = importlib.import_module("timm_reid.kernels._segment_norm")
T = importlib.import_module("timm_reid.kernels._tnorm")
BL = importlib.import_module("timm_reid.kernels._blend")
TARGET = GPUTarget("cuda", 90, 32)
F32 = "*fp32"


def compile_variant(kernel, types, consts, label, num_warps=4, usage=False):
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    signature = {name: "constexpr" if name in consts else types.get(name, "i32") for name in fn.arg_names}
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs=consts), target=TARGET,
                                  options={"num_warps": num_warps})
    except Exception as e:  # report every variant, not only the first failure
        print("FAIL", label, type(e).__name__, " | ".join(str(e).strip().splitlines()[-8:]))
        return False
    print("OK  ", label, ptxas_usage(compiled) if usage else "")
    return True


def ptxas_usage(compiled):
    """``registers=R spill_stores=S spill_loads=S`` from ``ptxas -v`` on the kernel's PTX (the bundled
    ptxas; empty when it cannot be run)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    try:
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(compiled.asm["ptx"])
            f.flush()
            proc = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                                  capture_output=True, text=True, timeout=120)
        regs = re.search(r"Used (\d+) registers", proc.stderr)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
        return (f"registers={regs.group(1) if regs else '?'} "
                f"spill_stores={spills.group(1) if spills else '?'} spill_loads={spills.group(2) if spills else '?'}")
    except Exception as e:  # the usage line is information, never a failure
        return f"(ptxas -v unavailable: {type(e).__name__})"


def main():
    ok = True
    for xdt in ("*fp32", "*bf16"):  # fp16 lowers like bf16 (16-bit loads, fp32 math)
        ok &= compile_variant(S._instance_stats_kernel, {"x_ptr": xdt, "pmean_ptr": F32, "pm2_ptr": F32},
                              {"BLOCK_L": 32, "BLOCK_C": 32}, f"instance_stats {xdt}")
        for has_v, has_c in ((True, True), (False, True), (False, False)):
            types = {"u_ptr": xdt, "v_ptr": xdt, "a_ptr": F32, "b_ptr": F32, "m_ptr": F32, "c_ptr": F32, "out_ptr": xdt}
            ok &= compile_variant(P._apply_kernel, types, {"HAS_V": has_v, "HAS_C": has_c, "BLOCK_L": 64, "BLOCK_C": 16},
                                  f"apply {xdt} HAS_V={has_v} HAS_C={has_c}")
        types = {"x_ptr": xdt, "dy_ptr": xdt, "mean_ptr": F32, "rstd_ptr": F32, "ps1_ptr": F32, "ps2_ptr": F32}
        ok &= compile_variant(B._bwd_reduce_kernel, types, {"BLOCK_L": 16, "BLOCK_C": 64}, f"bwd_reduce {xdt}")
        types = {"x_ptr": xdt, "rm_ptr": F32, "rv_ptr": F32, "cam_ptr": "*i64", "out_ptr": xdt, "eps": "fp64"}
        ok &= compile_variant(T._fanout_kernel, types, {"BLOCK_L": 32, "BLOCK_C": 32}, f"fanout {xdt}")

    types = {name: F32 for name in S._finalize_kernel.arg_names if name.endswith("_ptr")}
    types.update({"seg_ptr": "*i64", "tgt_ptr": "*i64", "gate_ptr": "*bf16", "rm_ptr": "*fp16", "rv_ptr": "*fp16",
                  "rm_out_ptr": "*fp16", "rv_out_ptr": "*fp16", "momentum": "fp64", "eps": "fp64"})
    names = ("TRAINING", "NEED_INSTANCE", "HAS_GATE", "MIX_STD", "HAS_WEIGHT", "HAS_BIAS", "UPDATE_RUNNING",
             "CONVERT", "WRITE_COEF")
    variants = [  # AIBN train / eval (std) / TNorm normalize eval / convert train / convert eval / statistics only
        (1, 1, 1, 0, 1, 1, 1, 0, 1), (0, 1, 1, 1, 0, 0, 0, 0, 1), (0, 0, 0, 0, 1, 1, 0, 0, 1),
        (1, 1, 0, 0, 0, 0, 1, 1, 1), (0, 0, 0, 0, 0, 0, 0, 1, 1), (1, 1, 0, 0, 0, 0, 0, 0, 0),
    ]
    for flags in variants:
        consts = dict(zip(names, map(bool, flags)), BLOCK_N=64, BLOCK_C=32)
        ok &= compile_variant(S._finalize_kernel, types, consts, f"finalize {flags}")

    types = {name: F32 for name in B._bwd_finalize_kernel.arg_names if name.endswith("_ptr")}
    types.update({"seg_ptr": "*i64", "gate_ptr": "*bf16", "weight_ptr": "*bf16"})
    names = ("TRAINING", "NEED_INSTANCE", "HAS_GATE", "MIX_STD", "HAS_WEIGHT", "SEG_MODE")
    variants = [(1, 1, 1, 0, 1, 0), (1, 1, 1, 1, 0, 1), (1, 1, 1, 1, 1, 2), (0, 1, 1, 0, 1, 0), (0, 0, 0, 0, 1, 0),
                (1, 1, 0, 0, 1, 0)]
    for flags in variants:
        consts = {k: (v if k == "SEG_MODE" else bool(v)) for k, v in zip(names, flags)}
        consts.update(BLOCK_N=64, BLOCK_C=32)
        ok &= compile_variant(B._bwd_finalize_kernel, types, consts, f"bwd_finalize {flags}")
    ok &= compile_blend()
    return 0 if ok else 1


def compile_blend():
    """The blended norm's kernels (``_blend``) at the tile shapes of its launch plan."""
    ok = True
    for xdt in ("*fp32", "*bf16"):
        for block_l, block_c in ((4, 512), (2, 1024), (8, 512)):  # ConvNeXt-T stages 3/4, NCHW (4096 elements)
            types = {"x_ptr": xdt, "pmean_ptr": F32, "pm2_ptr": F32, "ln_mean_ptr": F32, "ln_rstd_ptr": F32,
                     "eps": "fp64"}
            ok &= compile_variant(BL._ln_stats_kernel, types, {"BLOCK_L": block_l, "BLOCK_C": block_c},
                                  f"blend ln_stats {xdt} {block_l}x{block_c}", num_warps=8, usage=True)
            types = {name: F32 for name in BL._ln_bwd_reduce_kernel.arg_names if name.endswith("_ptr")}
            types.update(x_ptr=xdt, dy_ptr=xdt, weight_ptr="*bf16")
            for has_weight in (True, False):
                ok &= compile_variant(BL._ln_bwd_reduce_kernel, types,
                                      {"HAS_WEIGHT": has_weight, "BLOCK_L": block_l, "BLOCK_C": block_c},
                                      f"blend ln_bwd_reduce {xdt} {block_l}x{block_c} HAS_WEIGHT={has_weight}",
                                      num_warps=8, usage=True)
        types = {name: F32 for name in BL._ln_apply_kernel.arg_names if name.endswith("_ptr")}
        types.update(x_ptr=xdt, out_ptr=xdt, weight_ptr="*bf16", bias_ptr="*bf16", blend_ptr="*bf16")
        for flags in ((True, True), (False, False)):
            ok &= compile_variant(BL._ln_apply_kernel, types,
                                  {"HAS_WEIGHT": flags[0], "HAS_BIAS": flags[1], "BLOCK_L": 16, "BLOCK_C": 64},
                                  f"blend ln_apply {xdt} HAS_WEIGHT/BIAS={flags[0]}", usage=True)
        types = {"x_ptr": xdt, "m_ptr": F32, "a_ptr": F32, "k_ptr": F32, "out_ptr": xdt}
        ok &= compile_variant(BL._centred_apply_kernel, types, {"BLOCK_L": 64, "BLOCK_C": 16},
                              f"blend centred_apply {xdt}", usage=True)
        types = {name: F32 for name in BL._ln_dx_kernel.arg_names if name.endswith("_ptr")}
        types.update(x_ptr=xdt, dy_ptr=xdt, dx_ptr=xdt)
        for has_weight in (True, False):
            ok &= compile_variant(BL._ln_dx_kernel, types, {"HAS_WEIGHT": has_weight, "BLOCK_L": 16, "BLOCK_C": 64},
                                  f"blend ln_dx {xdt} HAS_WEIGHT={has_weight}", usage=True)
    types = {name: F32 for name in BL._bn_coef_kernel.arg_names if name.endswith("_ptr")}
    types.update(rm_ptr="*fp16", rv_ptr="*fp16", weight_ptr="*bf16", bias_ptr="*bf16", blend_ptr="*bf16", eps="fp64")
    for training, affine in ((True, True), (False, True), (True, False)):
        ok &= compile_variant(BL._bn_coef_kernel, types,
                              {"TRAINING": training, "HAS_WEIGHT": affine, "HAS_BIAS": affine, "BLOCK_N": 64,
                               "BLOCK_C": 32}, f"blend bn_coef TRAINING={training} affine={affine}", num_warps=8,
                              usage=True)
    types = {name: F32 for name in BL._bn_bwd_kernel.arg_names if name.endswith("_ptr")}
    types.update(weight_ptr="*bf16", blend_ptr="*bf16")
    for training, has_weight in ((True, True), (False, True), (True, False)):
        ok &= compile_variant(BL._bn_bwd_kernel, types,
                              {"TRAINING": training, "HAS_WEIGHT": has_weight, "BLOCK_N": 64, "BLOCK_C": 32},
                              f"blend bn_bwd TRAINING={training} HAS_WEIGHT={has_weight}", num_warps=8,
                              usage=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
