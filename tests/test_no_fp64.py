"""No FP64 in any float, half or bfloat16 kernel: the CUDA kernels as PTX (compiled here, no GPU needed) and the
built extension's AVX2/AVX-512 CPU loops, disassembled. FP64 runs at 1/2 of the FP32 rate on an H100, 1/64 on
consumer and inference GPUs, and at half the vector width on a CPU."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernel_ops

from gelu_ext.testing import available_cpu_capabilities


@pytest.fixture(scope="module")
def ptx_kernels():
    if kernel_ops.find_nvcc() is None:
        pytest.skip("needs nvcc (CUDA_HOME) to compile the CUDA kernels to PTX")
    return kernel_ops.kernels(kernel_ops.compile_ptx("sm_90"))


def test_every_cuda_kernel_is_found(ptx_kernels):
    # per op, 4 dtypes x 2 modes x 2 passes x (vectorized, scalar); plus the column sums' reduction for 4 dtypes
    assert len(ptx_kernels) == 3 * 32 + 4
    assert {k["dtype"] for k in ptx_kernels} == {"float32", "float64", "float16", "bfloat16"}
    assert {k["op"] for k in ptx_kernels} == {"gelu", "bias_gelu", "geglu", "-"}


def test_no_fp64_in_float_half_and_bfloat16_cuda_kernels(ptx_kernels):
    offenders = [k["name"] for k in ptx_kernels if k["dtype"] != "float64" and k["f64_ops"] > 0]
    assert not offenders, f"FP64 instructions in: {offenders}"
    # the counter is not blind: the double kernels do use FP64 (the C library's erfc and exp)
    assert all(k["f64_ops"] > 0 for k in ptx_kernels if k["dtype"] == "float64")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils) to disassemble the extension")
@pytest.mark.skipif("avx2" not in available_cpu_capabilities(), reason="the AVX2/AVX-512 loops need an x86-64 CPU")
def test_no_fp64_in_float_half_and_bfloat16_cpu_loops():
    loops = kernel_ops.cpu_loops()
    # 3 ops x 2 instruction sets x 2 passes x 2 modes x 4 dtypes (the baseline loops are inlined into their callers),
    # and the AVX512-BF16 variant's 12 bfloat16 loops (3 ops x 2 passes x 2 modes)
    assert len(loops) == 96 + 12
    assert {loop["dtype"] for loop in loops if loop["isa"] == "avx512bf16"} == {"bfloat16"}
    assert {loop["op"] for loop in loops} == {"gelu", "bias_gelu", "geglu"}
    offenders = [loop for loop in loops if loop["dtype"] != "float64" and loop["f64_ops"] > 0]
    assert not offenders
    assert all(loop["f64_ops"] > 0 for loop in loops if loop["dtype"] == "float64")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils) to disassemble the extension")
@pytest.mark.skipif("avx2" not in available_cpu_capabilities(), reason="the AVX2/AVX-512 loops need an x86-64 CPU")
def test_every_float_half_and_bfloat16_cpu_loop_is_vectorized():
    # GCC vectorizes the element loops or silently leaves them scalar: geglu's bfloat16 tanh backward once ran scalar
    # (no ymm or zmm instruction, 10x slower): GCC merged the tests of its far side and large factor into a select of
    # booleans it could not vectorize, until math::factor_of's large arm changed form. The smallest vectorized loop
    # names a full-width register ~180 times (AVX2) / ~340 (AVX-512); a scalar one names none.
    loops = [loop for loop in kernel_ops.cpu_loops() if loop["dtype"] != "float64"]
    assert len(loops) == 72 + 12
    scalar = [f"{loop['op']} {loop['pass']} {loop['mode']} {loop['dtype']} {loop['isa']}: {loop['wide_ops']}"
              for loop in loops if loop["wide_ops"] < 100]  # fmt: skip
    assert not scalar, f"CPU loops left scalar: {scalar}"
