"""benchmarks/kernel_ops.py's SASS counting and roofline model: the loop finder, the fast-path filter, the classes and
pipes, and the model's bottleneck on synthetic inputs; then, where nvcc is installed, on the real gelu kernels and the
ATen-like reference compiled for sm_90. Behaviour only: no timing, no figures that a compiler update would move."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernel_ops

# A kernel as cuobjdump prints it (one encoding line kept): a prologue, a loop whose head is 0x0040, with a bounds
# guard (@P1 BRA over a stretch with branches and a call inside: fast path), a division's slow path in it (MOV + CALL,
# skipped by @!P0 BRA: cold), a predicated skip of plain arithmetic (@P2 BRA over FADD: fast path), the back edge at
# 0x0130, EXIT, the spin after it, and the out-of-line subroutine.
SYNTHETIC = """
\tcode for sm_90
\t\tFunction : _Z6kernelPf
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                       /* 0x00000a00ff017b82 */
                                                                                /* 0x000fe20000000800 */
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   ULDC.64 UR4, c[0x0][0x208] ;
        /*0030*/                   IMAD.WIDE R2, R0, 0x4, R2 ;
        /*0040*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0050*/                   PRMT R8, R4, 0x7632, R8 ;
        /*0060*/               @P1 BRA 0x100 ;
        /*0070*/                   FFMA R9, R8, R8, 1 ;
        /*0080*/                   MUFU.RCP R10, R9 ;
        /*0090*/                   FCHK P0, R8, R9 ;
        /*00a0*/              @!P0 BRA 0xd0 ;
        /*00b0*/                   MOV R34, 0xd0 ;
        /*00c0*/                   CALL.REL.NOINC 0x200 ;
        /*00d0*/                   F2FP.BF16.F32.PACK_AB R11, R10, R9 ;
        /*00e0*/               @P2 BRA 0x100 ;
        /*00f0*/                   FADD R12, R11, -R9 ;
        /*0100*/                   HADD2.F32 R13, -RZ, R12.H0_H0 ;
        /*0110*/                   STG.E.128 desc[UR4][R2.64], R8 ;
        /*0120*/                   ISETP.GE.AND P0, PT, R0, UR4, PT ;
        /*0130*/              @!P0 BRA 0x40 ;
        /*0140*/                   EXIT ;
        /*0150*/                   BRA 0x150;
        /*0200*/                   FFMA R3, R3, R3, R3 ;
        /*0210*/                   RET.REL.NODEC R34 0x0 ;
\t\t..........
"""


def synthetic_instructions():
    functions = kernel_ops.parse_sass(SYNTHETIC)
    assert list(functions) == ["_Z6kernelPf"]
    return functions["_Z6kernelPf"]


def test_parse_sass_reads_addresses_opcodes_and_predicates():
    instructions = synthetic_instructions()
    assert len(instructions) == 24  # the encoding lines and the header are not instructions
    assert instructions[0] == kernel_ops.Instruction(0x0, "LDC", "", "R1, c[0x0][0x28]")
    guard = instructions[10]
    assert (guard.address, guard.base, guard.predicate, guard.target) == (0xA0, "BRA", "@!P0", 0xD0)
    assert instructions[4].opcode == "LDG.E.128.CONSTANT" and instructions[4].target is None


def test_main_loop_is_the_back_edge_not_the_spin_after_exit():
    instructions = synthetic_instructions()
    head, back_edge = kernel_ops.main_loop(instructions)
    assert (instructions[head].address, instructions[back_edge].address) == (0x40, 0x130)
    straight = [ins for ins in instructions if ins.address != 0x130]  # no back edge left but the spin
    assert kernel_ops.main_loop(straight) is None


def test_cold_paths_skip_the_call_but_not_a_guarded_stretch_with_a_branch():
    instructions = synthetic_instructions()
    head, back_edge = kernel_ops.main_loop(instructions)
    cold = kernel_ops.cold_paths(instructions, head, back_edge)
    assert sorted(instructions[k].address for k in cold) == [0xB0, 0xC0]  # MOV + CALL: not the guard, not the FADD


def test_loop_profile_counts_the_fast_path_per_element_by_class_and_pipe():
    profile = kernel_ops.loop_profile(synthetic_instructions(), element_bytes=2)
    assert profile["has_loop"] and profile["prologue"] == 4
    assert profile["body"] == 14 and profile["cold"] == 2  # 0x40..0x130 is 16 instructions
    assert profile["elements_per_iteration"] == 8  # one 16-byte store of bfloat16
    per = {key: profile[key] * 8 for key in (*kernel_ops.CATEGORIES, *(f"pipe_{p}" for p in kernel_ops.PIPES))}
    assert per["fp32"] == 3  # FFMA, FCHK, FADD
    assert per["int"] == 2  # PRMT, ISETP
    assert per["conversion"] == 2  # F2FP, HADD2.F32
    assert per["mufu"] == 1 and per["memory"] == 2 and per["fp64"] == 0
    assert per["other"] == 4  # the three branches on the fast path and the back edge
    assert sum(per[c] for c in kernel_ops.CATEGORIES) == 14
    assert per["pipe_fma"] == 3 and per["pipe_alu"] == 4 and per["pipe_xu"] == 1 and per["pipe_lsu"] == 2
    assert profile["per_element"] == pytest.approx(14 / 8)
    two_outputs = kernel_ops.loop_profile(synthetic_instructions(), element_bytes=2, outputs=2)
    assert two_outputs["elements_per_iteration"] == 4


@pytest.mark.parametrize(
    ("opcode", "expected"),
    [
        ("FFMA", ("fp32", "fma")),
        ("FSETP.GEU.AND", ("fp32", "alu")),
        ("IMAD.MOV.U32", ("int", "fma_heavy")),
        ("LOP3.LUT", ("int", "alu")),
        ("F2FP.BF16.F32.PACK_AB", ("conversion", "alu")),
        ("F2I.FTZ.U32.TRUNC", ("conversion", "xu")),
        ("HADD2.F32", ("conversion", "fma")),
        ("HFMA2.MMA", ("fp32", "fma")),
        ("MUFU.EX2", ("mufu", "xu")),
        ("STG.E.U16", ("memory", "lsu")),
        ("DFMA", ("fp64", "fp64")),
        ("BSSY", ("other", "issue_only")),
        ("UIADD3", ("other", "issue_only")),
    ],
)
def test_classify(opcode, expected):
    assert kernel_ops.classify(kernel_ops.Instruction(0, opcode, "", "")) == expected


def test_store_bytes():
    sizes = {"STG.E.128": 16, "STG.E.64": 8, "STG.E": 4, "STG.E.U16": 2}
    for opcode, size in sizes.items():
        assert kernel_ops.store_bytes(kernel_ops.Instruction(0, opcode, "", "")) == size


def profile_of(per_element, fma=0.0, alu=0.0, xu=0.0, heavy=0.0, lsu=0.0):
    return {"per_element": per_element, "pipe_fma": fma, "pipe_alu": alu, "pipe_xu": xu, "pipe_fma_heavy": heavy,
            "pipe_lsu": lsu}  # fmt: skip


def test_model_names_memory_issue_or_a_pipe():
    h200 = next(g for g in kernel_ops.GPUS if g.name == "H200")
    light = kernel_ops.predict(profile_of(10, fma=8), h200, "gelu", "forward", "bfloat16")
    assert light["bottleneck"] == "memory" and light["fraction_of_copy"] == 1.0
    budget = light["issue_budget"]  # instructions per element that still fit under the copy time
    heavy = kernel_ops.predict(profile_of(2 * budget, fma=budget), h200, "gelu", "forward", "bfloat16")
    assert heavy["bottleneck"] == "issue" and heavy["fraction_of_copy"] == pytest.approx(0.5)
    mufu = kernel_ops.predict(profile_of(budget / 2, xu=budget / 4), h200, "gelu", "forward", "bfloat16")
    assert mufu["bottleneck"] == "xu"  # 16 lanes: a quarter of the instructions on the XU outweighs issue
    # twice the bytes (float32) doubles the budget: the same math is memory-bound there
    wide = kernel_ops.predict(profile_of(2 * budget * 0.9, fma=budget), h200, "gelu", "forward", "float32")
    assert wide["bottleneck"] == "memory"
    a100 = next(g for g in kernel_ops.GPUS if g.arch == "sm_80")
    fma_bound = kernel_ops.predict(profile_of(200, fma=190), a100, "gelu", "forward", "bfloat16")
    assert fma_bound["bottleneck"] == "fma"  # one 64-lane FMA pipe on GA100: FP32 outweighs issue at 128
    imad = kernel_ops.predict(profile_of(110, fma=50, heavy=50), a100, "gelu", "forward", "bfloat16")
    assert imad["bottleneck"] == "fma"  # IMAD shares GA100's FMA pipe: 100 on 64 lanes outweighs 110 issued on 128
    h100 = next(g for g in kernel_ops.GPUS if g.name == "H100 SXM")
    heavy_bound = kernel_ops.predict(profile_of(110, fma=10, heavy=90), h100, "gelu", "forward", "bfloat16")
    assert heavy_bound["bottleneck"] == "fma_heavy"  # IMAD only on fmaheavy's 64 lanes of GH100's 128


def test_gpu_table_has_the_gpus_the_issue_names_with_sources():
    names = {g.name for g in kernel_ops.GPUS}
    assert {"H100 SXM", "H200", "A100 SXM 80GB", "L4", "RTX 4090"} <= names
    assert all(g.sources and g.sms > 0 and g.boost_ghz > 0 and g.dram_gbs > 0 for g in kernel_ops.GPUS)


def test_kernel_identity_of_gelu_ext_and_reference_names():
    ours = ("void gelu_ext::cuda::detail::elementwise_vectorized<gelu_ext::GeluBackward<(gelu_ext::Approximate)1>, "
            "__nv_bfloat16, 2>(__nv_bfloat16 const*, __nv_bfloat16 const*, __nv_bfloat16*, long)")  # fmt: skip
    reference = ("void gelu_ext::cuda::detail::elementwise_scalar<gelu_ext_reference::AtenGeluForward<"
                 "(gelu_ext::Approximate)0>, float, 1>(float const*, float const*, float*, long)")  # fmt: skip
    assert kernel_ops.kernel_identity(ours) == {"impl": "gelu_ext", "dtype": "bfloat16", "op": "gelu",
                                                "kind": "vectorized", "mode": "tanh", "pass": "backward"}  # fmt: skip
    assert kernel_ops.kernel_identity(reference) == {"impl": "aten-like", "dtype": "float32", "op": "gelu",
                                                     "kind": "scalar", "mode": "none", "pass": "forward"}  # fmt: skip


# ---- The real kernels (nvcc 13 for sm_90: ~15 s of one core) --------------------------------------------------


@pytest.fixture(scope="module")
def gelu_sass():
    if kernel_ops.find_nvcc() is None or kernel_ops.find_cuobjdump() is None:
        pytest.skip("needs nvcc (CUDA_HOME) and cuobjdump (the CUDA toolkit or the triton wheel)")
    sass = kernel_ops.compile_sass("sm_90", sources=[kernel_ops.CUDA_DIR / "gelu_kernels.cu"])
    return sass, kernel_ops.compile_reference_sass("sm_90")


def test_real_gelu_kernels_have_a_loop_and_the_launch_shape_per_iteration(gelu_sass):
    ours = kernel_ops.sass_kernels(gelu_sass[0])
    assert len(ours) == 4 * 2 * 2 * 2  # dtypes x modes x passes x (vectorized, scalar)
    for k in ours:
        assert k["has_loop"], k["name"]
        if k["kind"] == "vectorized":  # 4 vectors of 16 bytes per thread and iteration
            assert k["elements_per_iteration"] == 4 * 16 // kernel_ops.ELEMENT_BYTES[k["dtype"]], k["name"]
        else:
            assert k["elements_per_iteration"] >= 1, k["name"]
        total = sum(k[c] for c in kernel_ops.CATEGORIES)
        assert total == pytest.approx(k["per_element"])
        if k["dtype"] != "float64":
            assert k["fp64"] == 0, k["name"]
        if k["dtype"] == "float32":
            assert k["mufu"] >= 1, k["name"]  # the division's MUFU.RCP
    # the float32 erf mode divides: its slow path is in the loop, but not on the counted fast path; the 16-bit math
    # (math::gelu_erf16, math::gelu_tanh16) has no division, no MUFU instruction at all, and no slow path
    assert all(k["cold"] > 0 for k in ours if k["mode"] == "none" and k["dtype"] == "float32")
    sixteen = [k for k in ours if k["dtype"] in ("float16", "bfloat16")]
    assert len(sixteen) == 16 and all(k["mufu"] == 0 and k["cold"] == 0 for k in sixteen), sixteen
    # and it fits an H200's issue budget (issue 24's target): <= 30 instructions per element forward, <= 45 backward
    for k in sixteen:
        if k["kind"] == "vectorized":
            assert k["per_element"] <= (30 if k["pass"] == "forward" else 45), k


def test_reference_kernels_and_the_roofline_rows(gelu_sass, tmp_path):
    references = kernel_ops.sass_kernels(gelu_sass[1])
    assert {k["impl"] for k in references} == {"aten-like"}
    assert len(references) == 3 * 2 * 2 * 2  # float, half, bfloat16 x modes x passes x kinds
    rows = kernel_ops.roofline({"sm_90": gelu_sass[0]}, {"sm_90": gelu_sass[1]})
    assert {r["gpu"] for r in rows} == {"H100 SXM", "H200"}  # only the GPUs of the compiled arch
    assert all(r["dtype"] != "float64" for r in rows)
    assert all("ratio_to_aten" in r for r in rows)  # every gelu kernel has its reference
    for r in rows:
        assert 0 < r["fraction_of_copy"] <= 1
        assert r["bottleneck"] in ("memory", "issue", "fma", "fma_heavy", "alu", "xu", "lsu")
    path = tmp_path / "roofline.csv"
    kernel_ops.write_roofline_csv(rows, path)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(kernel_ops.ROOFLINE_COLUMNS) and len(lines) == len(rows) + 1
    table = kernel_ops.roofline_table(rows).splitlines()
    assert table[0].startswith("| kernel |") and len(table) == 2 + 2 * 2 * 3  # passes x modes x dtypes
