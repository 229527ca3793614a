"""What the kernels really execute: the CUDA kernels compiled to PTX (no GPU needed), and the built extension's CPU
loops disassembled. Counts, per kernel, the FP64 instructions and the FP32 instructions per element.

    python benchmarks/kernel_ops.py              # PTX table for sm_90, then the CPU loops of the built extension
    python benchmarks/kernel_ops.py --arch sm_86

Kernels instantiated for float, half and bfloat16 must contain no FP64 instruction at all: FP64 runs at 1/2 of the
FP32 rate on an H100 and at 1/64 on consumer and inference GPUs (tests/test_ptx.py asserts it). The per-element
count divides a vectorized kernel's .f32-typed PTX instructions (conversions, comparisons and selects included;
a division counts once although SASS expands it) by the elements one thread handles per loop iteration:
kVectorsPerThread 16-byte vectors of 4 (float) or 8 (half types) elements for the flat kernels (gelu), one vector
for the rows kernel (bias_gelu, geglu).

    python benchmarks/kernel_ops.py --roofline   # SASS per element and a roofline model per GPU (H100, H200, ...)

--roofline compiles every kernel to SASS (nvcc -cubin, the extension's flags) and an ATen-like reference kernel of the
same launch shape (nvcc's default flags), disassembles them with cuobjdump (the CUDA toolkit's, or the one in the
triton wheel), finds each kernel's main loop by its back-edge branch and counts the instructions one iteration
executes on its fast path (the division's out-of-line slow path excluded), per element, by class. A model of each
GPU's issue rate, pipes and DRAM bandwidth (GPUS below, with sources) turns the counts into a predicted fraction of
copy bandwidth and names what bounds the kernel. The counts are exact for the code nvcc emits; the prediction is an
upper bound (perfect overlap of memory and math, no stalls), to be checked against a GPU when one runs.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
MACHINERY = CUDA_DIR / "elementwise_cuda.cuh"  # where kVectorsPerThread is defined
SCALAR_TYPES = {"float": "float32", "double": "float64", "__half": "float16", "__nv_bfloat16": "bfloat16"}
ELEMENT_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
_F64 = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z][\w.]*\.f64\b", re.M)  # any instruction typed .f64 (cvt.*.f64 too)
_F32 = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z][\w.]*\.f32\b", re.M)


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def compile_ptx(arch: str = "sm_90", nvcc: str | None = None) -> str:
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    # The flags the extension is built with (setup.py): -O3, --fmad=false. Every op's kernels file, one PTX text.
    ptx = []
    for source in sorted(CUDA_DIR.glob("*_kernels.cu")):
        cmd = [nvcc, "-ptx", f"-arch={arch}", "-std=c++17", "-O3", "--fmad=false", str(source), "-o", "-"]
        ptx.append(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return "\n".join(ptx)


def demangle(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


_OP = re.compile(r"gelu_ext::(Gelu|BiasGelu|Geglu)(Forward|Backward)<\(gelu_ext::Approximate\)([01])>")
_ROWS_VEC = re.compile(r"rows_kernel<[^,]+>, [\w:]+, (\d+),")


def kernels(ptx: str) -> list[dict]:
    """One entry per kernel: its demangled name, scalar type, op, kind, mode, pass, FP64 and FP32 instruction counts.

    Kinds: "vectorized" and "scalar" (the flat kernels), "rows" (16-byte vectors) and "rows_scalar" (the rows kernel,
    one element per thread), "column_sum" (the partial sums' reduction, no op). The per-element count divides a
    vectorized kernel's loop-body instructions by the elements one thread handles per iteration."""
    vectors_per_thread = int(re.search(r"kVectorsPerThread = (\d+);", MACHINERY.read_text()).group(1))
    chunks = re.split(r"^(?:\.visible\s+)?\.entry\s+", ptx, flags=re.M)[1:]
    names = [chunk.split("(", 1)[0].strip() for chunk in chunks]
    result = []
    for chunk, pretty in zip(chunks, demangle(names), strict=True):
        identity = kernel_identity(pretty)
        f32_ops = len(_F32.findall(chunk))
        per_element = None
        if identity["kind"] == "vectorized":
            per_element = f32_ops / (vectors_per_thread * 16 // ELEMENT_BYTES[identity["dtype"]])
        elif identity["kind"] == "rows":
            per_element = f32_ops / int(_ROWS_VEC.search(pretty).group(1))
        del identity["impl"]
        result.append({"name": pretty, **identity, "f64_ops": len(_F64.findall(chunk)), "f32_ops": f32_ops,
                       "f32_ops_per_element": per_element})  # fmt: skip
    return result


_CPU_LOOP = re.compile(
    r"^[0-9a-f]+ <void gelu_ext::cpu::segment_(avx512bf16|avx512|avx2)"
    r"<gelu_ext::(Gelu|BiasGelu|Geglu)(Forward|Backward)<\(gelu_ext::Approximate\)([01])>, (?:true|false), ([\w:]+),"
)
# packed or scalar double instructions, conversions included; not integer ones such as vpminsd (packed signed dwords)
_CPU_DOUBLE = re.compile(r"\s((?!v?p)\w+(?:pd|sd))\s")


# the instruction set's full-width registers: an instruction that names one works on 8 (ymm) or 16 (zmm) floats
# (avx512bf16: the AVX-512 loops for bfloat16 storage that convert with AVX512-BF16's instructions)
_CPU_WIDE_REGISTER = {"avx512bf16": re.compile(r"%zmm"), "avx512": re.compile(r"%zmm"), "avx2": re.compile(r"%ymm")}


def cpu_loops(library: str | None = None) -> list[dict]:
    """The AVX2 and AVX-512 loops of the built extension (objdump): per loop, its scalar type, how many
    instructions operate on doubles (movsd, a plain 8-byte move, does not count) and how many name a full-width
    vector register (`wide_ops`: 0 where GCC left the loop scalar)."""
    if library is None:
        import gelu_ext._C

        library = gelu_ext._C.__file__
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", library], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    loops, current = [], None
    for line in text.splitlines():
        if re.match(r"^[0-9a-f]+ <", line):
            match = _CPU_LOOP.match(line)
            current = None
            if match:
                isa, op, pass_, mode, scalar = match.groups()
                dtype = {"float": "float32", "double": "float64", "c10::Half": "float16", "c10::BFloat16": "bfloat16"}
                op = {"Gelu": "gelu", "BiasGelu": "bias_gelu", "Geglu": "geglu"}[op]
                current = {"op": op, "pass": pass_.lower(), "isa": isa, "mode": "tanh" if mode == "1" else "none",
                           "dtype": dtype[scalar], "f64_ops": 0, "wide_ops": 0}  # fmt: skip
                loops.append(current)
        elif current is not None:
            found = _CPU_DOUBLE.search(line)
            if found and found.group(1) not in ("movsd", "vmovsd"):
                current["f64_ops"] += 1
            if _CPU_WIDE_REGISTER[current["isa"]].search(line):
                current["wide_ops"] += 1
    return loops


# ---- SASS: what the GPU executes, and a roofline model of it ------------------------------------------------------


def find_cuobjdump() -> str | None:
    """The CUDA toolkit's cuobjdump, else the one the triton wheel ships (a venv with torch has it)."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "cuobjdump").exists():
            return str(Path(home) / "bin" / "cuobjdump")
    if shutil.which("cuobjdump"):
        return shutil.which("cuobjdump")
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if candidate.exists():
            return str(candidate)
    return None


# The comparison kernel: ATen's formulas (aten/src/ATen/native/cuda/ActivationGeluKernel.cu computes in float for
# the half types, with erff and tanhf) in the same launch shape as gelu_ext's flat kernels (elementwise_vectorized:
# 256 threads, 4 16-byte vectors per thread), compiled with nvcc's default flags (FMA contraction on). Only the math
# differs, so the instruction counts compare the evaluations.
REFERENCE_SOURCE = r"""
#include "elementwise_cuda.cuh"

namespace gelu_ext_reference {
using gelu_ext::Approximate;
constexpr float kAlpha = 0.70710678118654752f;       // 1 / sqrt(2)
constexpr float kBeta = 0.39894228040143268f;        // 1 / sqrt(2 pi)
constexpr float kTanhBeta = 0.79788456080286536f;    // sqrt(2 / pi)
constexpr float kKappa = 0.044715f;

template <Approximate kMode>
struct AtenGeluForward {
  template <gelu_ext::OutputFormat = gelu_ext::OutputFormat::kFloat32>  // ATen's math is the same for every dtype
  __device__ static float apply(float x) {
    if (kMode == Approximate::kTanh) {
      return 0.5f * x * (1.0f + tanhf(kTanhBeta * (x + kKappa * x * x * x)));
    }
    return 0.5f * x * (1.0f + erff(x * kAlpha));
  }
};

template <Approximate kMode>
struct AtenGeluBackward {
  template <gelu_ext::OutputFormat = gelu_ext::OutputFormat::kFloat32>
  __device__ static float apply(float dy, float x) {
    if (kMode == Approximate::kTanh) {
      const float x_sq = x * x;
      const float inner = kTanhBeta * (x + kKappa * x_sq * x);
      const float tanh_inner = tanhf(inner);
      const float left_derivative = 0.5f * (1.0f + tanh_inner);
      const float right_derivative =
          0.5f * x * (1.0f - tanh_inner * tanh_inner) * kTanhBeta * (1.0f + 3.0f * kKappa * x_sq);
      return dy * (left_derivative + right_derivative);
    }
    const float cdf = 0.5f * (1.0f + erff(x * kAlpha));
    const float pdf = expf(-0.5f * x * x) * kBeta;
    return dy * (cdf + x * pdf);
  }
};
}  // namespace gelu_ext_reference

namespace gelu_ext::cuda::detail {
#define GELU_EXT_REFERENCE(OP, T, K)                                                                        \
  template __global__ void elementwise_vectorized<gelu_ext_reference::OP, T, K>(const T*, const T*, T*, int64_t); \
  template __global__ void elementwise_scalar<gelu_ext_reference::OP, T, K>(const T*, const T*, T*, int64_t);
#define GELU_EXT_REFERENCE_TYPES(OP, K) \
  GELU_EXT_REFERENCE(OP, float, K) GELU_EXT_REFERENCE(OP, __half, K) GELU_EXT_REFERENCE(OP, __nv_bfloat16, K)
GELU_EXT_REFERENCE_TYPES(AtenGeluForward<Approximate::kNone>, 1)
GELU_EXT_REFERENCE_TYPES(AtenGeluForward<Approximate::kTanh>, 1)
GELU_EXT_REFERENCE_TYPES(AtenGeluBackward<Approximate::kNone>, 2)
GELU_EXT_REFERENCE_TYPES(AtenGeluBackward<Approximate::kTanh>, 2)
}  // namespace gelu_ext::cuda::detail
"""


def _cubin_to_sass(cmd: list[str], cuobjdump: str, workdir: Path, stem: str) -> str:
    cubin = workdir / f"{stem}.cubin"
    subprocess.run([*cmd, "-o", str(cubin)], check=True, capture_output=True, text=True)
    return subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout


def compile_sass(arch: str = "sm_90", nvcc: str | None = None, cuobjdump: str | None = None,
                 sources: list[Path] | None = None) -> str:  # fmt: skip
    """Every op's kernels file as SASS for `arch`, with the extension's flags (-O3, --fmad=false), one text."""
    import tempfile

    nvcc = nvcc or find_nvcc()
    cuobjdump = cuobjdump or find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        raise FileNotFoundError("nvcc and cuobjdump are needed: set CUDA_HOME (cuobjdump may come from triton)")
    with tempfile.TemporaryDirectory() as tmp:
        texts = []
        for source in sources or sorted(CUDA_DIR.glob("*_kernels.cu")):
            cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-O3", "--fmad=false", str(source)]
            texts.append(_cubin_to_sass(cmd, cuobjdump, Path(tmp), source.stem))
        return "\n".join(texts)


def compile_reference_sass(arch: str = "sm_90", nvcc: str | None = None, cuobjdump: str | None = None) -> str:
    """The ATen-like reference kernels (REFERENCE_SOURCE) as SASS, with nvcc's default flags."""
    import tempfile

    nvcc = nvcc or find_nvcc()
    cuobjdump = cuobjdump or find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        raise FileNotFoundError("nvcc and cuobjdump are needed: set CUDA_HOME (cuobjdump may come from triton)")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "aten_like_reference.cu"
        source.write_text(REFERENCE_SOURCE)
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", f"-I{CUDA_DIR}", str(source)]
        return _cubin_to_sass(cmd, cuobjdump, Path(tmp), source.stem)


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: "FFMA", "LDG.E.128.CONSTANT", "F2FP.BF16.F32.PACK_AB"
    predicate: str  # "" or "@!P0"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def target(self) -> int | None:
        """A branch's or call's target address."""
        if self.base not in ("BRA", "CALL", "BRX", "JMP"):
            return None
        found = re.findall(r"0x([0-9a-f]+)", self.operands)
        return int(found[-1], 16) if found else None


_SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$", re.M)
_SASS_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", re.M)


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """cuobjdump -sass text -> {mangled function name: its instructions in address order}."""
    headers = list(_SASS_FUNCTION.finditer(text))
    functions = {}
    for k, header in enumerate(headers):
        end = headers[k + 1].start() if k + 1 < len(headers) else len(text)
        body = text[header.end() : end]
        functions[header.group(1)] = [
            Instruction(int(m.group(1), 16), m.group(3), (m.group(2) or "").strip(), m.group(4).strip())
            for m in _SASS_INSTRUCTION.finditer(body)
        ]
    return functions


def main_loop(instructions: list[Instruction]) -> tuple[int, int] | None:
    """(index of the loop head, index of its back-edge branch) of the widest loop, or None for straight-line code.

    A back edge is a branch to an earlier address; a branch to itself (the spin after EXIT) is none."""
    index = {ins.address: k for k, ins in enumerate(instructions)}
    best = None
    for k, ins in enumerate(instructions):
        target = ins.target
        if ins.base == "BRA" and target is not None and target < ins.address and target in index:
            if best is None or k - index[target] > best[1] - best[0]:
                best = (index[target], k)
    return best


def cold_paths(instructions: list[Instruction], begin: int, end: int) -> set[int]:
    """Indices in [begin, end] that the fast path skips: the stretch a conditional forward branch jumps over when
    that stretch holds a CALL and no branch of its own -- the out-of-line slow path of a division (FCHK sets the
    predicate; nearly never taken). Stretches with branches (a vector's bounds guard) stay on the fast path."""
    index = {ins.address: k for k, ins in enumerate(instructions)}
    cold: set[int] = set()
    for k in range(begin, end + 1):
        ins = instructions[k]
        target = ins.target
        if ins.base != "BRA" or not ins.predicate or target is None or target <= ins.address or target not in index:
            continue
        skipped = range(k + 1, index[target])
        bases = [instructions[j].base for j in skipped]
        if "CALL" in bases and not any(b in ("BRA", "BRX", "JMP", "EXIT", "RET") for b in bases):
            cold.update(skipped)
    return cold


# Instruction classes (the report's columns) and the pipe that executes each (the model's constraints). Pipes follow
# NVIDIA's descriptions (Nsight Compute profiling guide, "Pipelines"; NVIDIA's answer on the FMA pipes of GA100, GA10x
# and GH100, forums.developer.nvidia.com/t/separate-cuda-core-pipeline-for-fp16-and-fp32/302018): FP32 arithmetic on
# the FMA pipes (fmaheavy + fmalite), IMAD also on fmaheavy only; integer, logic, moves, compares, min/max and the fast
# FP32 -> 16-bit packing conversion (F2FP) on the ALU; MUFU and the other conversions on the XU; loads/stores on the
# LSU; branches and uniform-datapath instructions cost an issue slot only.
_FP32_FMA = {"FFMA", "FMUL", "FADD", "FFMA32I", "FMUL32I", "FADD32I", "HFMA2", "HMUL2", "HADD2", "FSWZADD"}
_FP32_ALU = {"FSETP", "FSEL", "FMNMX", "FSET", "FCHK", "HSETP2", "HMNMX2", "FRND"}
_INT_FMA = {"IMAD", "IMUL", "IDP", "IMAD32I"}
_INT_ALU = {"IADD3", "IADD", "IADD32I", "VIADD", "LOP3", "LOP", "LOP32I", "SHF", "SHL", "SHR", "LEA", "ISETP",
            "IMNMX", "VIMNMX", "SEL", "PRMT", "IABS", "BFE", "BFI", "FLO", "POPC", "BREV", "MOV", "MOV32I", "P2R",
            "R2P", "PLOP3", "CS2R", "BMSK", "SGXT", "VIMNMX3"}  # fmt: skip
_CONVERSION_ALU = {"F2FP", "I2FP", "F2IP"}
_CONVERSION_XU = {"F2F", "F2I", "I2F"}
_MEMORY = {"LDG", "STG", "LD", "ST", "LDS", "STS", "LDL", "STL", "LDC", "ATOM", "ATOMG", "RED", "LDGSTS", "ATOMS"}
_FP64 = {"DFMA", "DMUL", "DADD", "DSETP", "DMNMX", "DSET"}
CATEGORIES = ("fp32", "int", "conversion", "mufu", "memory", "fp64", "other")
PIPES = ("fma", "fma_heavy", "alu", "xu", "lsu", "fp64", "issue_only")


def classify(ins: Instruction) -> tuple[str, str]:
    """(category, pipe) of one instruction."""
    base = ins.base
    if base == "HADD2" and ".F32" in ins.opcode:
        return "conversion", "fma"  # float16 -> float32 (HADD2.F32 R, -RZ, R.H0_H0)
    if base in _FP32_FMA:
        return "fp32", "fma"
    if base in _FP32_ALU:
        return "fp32", "alu"
    if base in _INT_FMA:
        return "int", "fma_heavy"
    if base in _INT_ALU:
        return "int", "alu"
    if base in _CONVERSION_ALU:
        return "conversion", "alu"
    if base in _CONVERSION_XU:
        return "conversion", "xu"
    if base == "MUFU":
        return "mufu", "xu"
    if base in _MEMORY:
        return "memory", "lsu"
    if base in _FP64:
        return "fp64", "fp64"
    return "other", "issue_only"  # branches, barriers, S2R, NOP, the uniform datapath (U*)


_STORE_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def store_bytes(ins: Instruction) -> int:
    """Bytes one thread's global store writes (STG.E.128: 16; STG.E: 4)."""
    for modifier in ins.opcode.split(".")[1:]:
        if modifier in _STORE_BYTES:
            return _STORE_BYTES[modifier]
    return 4


def loop_profile(instructions: list[Instruction], element_bytes: int, outputs: int = 1) -> dict:
    """Counts of one kernel: prologue (before the main loop's head), and per element of the loop body's fast path,
    by category and by pipe. Elements per iteration come from the body's global stores (bytes stored / element
    bytes / outputs per element), so they follow whatever unrolling nvcc chose."""
    loop = main_loop(instructions)
    begin, end = loop if loop else (0, len(instructions) - 1)
    cold = cold_paths(instructions, begin, end)
    body = [instructions[k] for k in range(begin, end + 1) if k not in cold]
    stored = sum(store_bytes(ins) for ins in body if ins.base == "STG")
    elements = stored / (element_bytes * outputs) if stored else 0
    profile = {
        "has_loop": loop is not None,
        "prologue": begin,
        "body": len(body),
        "cold": len(cold),
        "elements_per_iteration": elements,
        "per_element": len(body) / elements if elements else None,
    }
    counts = dict.fromkeys(CATEGORIES, 0) | {f"pipe_{p}": 0 for p in PIPES}
    for ins in body:
        category, pipe = classify(ins)
        counts[category] += 1
        counts[f"pipe_{pipe}"] += 1
    for key, value in counts.items():
        profile[key] = value / elements if elements else None
    return profile


_REFERENCE_OP = re.compile(r"gelu_ext_reference::AtenGelu(Forward|Backward)<\(gelu_ext::Approximate\)([01])>")
OUTPUTS = {("geglu", "backward"): 2}


def kernel_identity(pretty: str) -> dict:
    """What a demangled kernel name instantiates: dtype, op, kind, mode, pass, and impl ("gelu_ext" or
    "aten-like", the reference kernel)."""
    template_args = pretty[: pretty.index(">(") + 1] if ">(" in pretty else pretty
    scalar = next(name for name in SCALAR_TYPES if re.search(rf"[<,]\s*{re.escape(name)}\s*[,>]", template_args))
    dtype = SCALAR_TYPES[scalar]
    op = _OP.search(pretty)
    reference = _REFERENCE_OP.search(pretty)
    if "elementwise_vectorized" in pretty:
        kind = "vectorized"
    elif "elementwise_scalar" in pretty:
        kind = "scalar"
    elif "rows_kernel" in pretty:
        kind = "rows" if int(_ROWS_VEC.search(pretty).group(1)) > 1 else "rows_scalar"
    else:
        kind = "column_sum"
    if reference:
        name, pass_, mode = "gelu", reference.group(1).lower(), reference.group(2)
    elif op:
        name = {"Gelu": "gelu", "BiasGelu": "bias_gelu", "Geglu": "geglu"}[op.group(1)]
        pass_, mode = op.group(2).lower(), op.group(3)
    else:
        name, pass_, mode = "-", "backward", "0"
    return {"impl": "aten-like" if reference else "gelu_ext", "dtype": dtype, "op": name, "kind": kind,
            "mode": "tanh" if mode == "1" else "none", "pass": pass_}  # fmt: skip


def sass_kernels(sass: str) -> list[dict]:
    """One entry per kernel of a cuobjdump -sass text: kernel_identity's fields, its name, and loop_profile."""
    functions = parse_sass(sass)
    names = list(functions)
    result = []
    for mangled, pretty in zip(names, demangle(names), strict=True):
        identity = kernel_identity(pretty)
        outputs = OUTPUTS.get((identity["op"], identity["pass"]), 1)
        profile = loop_profile(functions[mangled], ELEMENT_BYTES[identity["dtype"]], outputs)
        result.append({"name": pretty, **identity, **profile})
    return result


# ---- The GPUs --------------------------------------------------------------------------------------------------
# Per-SM rates in thread-instructions per clock. Issue: 4 schedulers, one warp instruction each per clock (128).
# FP32: the FMA pipes, 64 lanes on GA100 (sm_80) and 128 (fmaheavy + fmalite) on GA10x, AD10x and GH100, of which
# fmaheavy's 64 also execute IMAD. ALU: 64 (integer add, logic, shifts, compare/min/max: 64 results per clock per SM
# in the Best Practices Guide's throughput table for 8.x and 9.0). XU: 16 (MUFU: "32-bit floating-point reciprocal,
# ..., exp2" 16 per clock per SM; conversions 16). LSU: 32 (one warp instruction per clock per SM). Sources:
#   [BPG]  CUDA C++ Best Practices Guide 13.0, 12.1.1 "Throughput of Native Arithmetic Instructions"
#          https://docs.nvidia.com/cuda/cuda-c-best-practices-guide/#throughput-of-native-arithmetic-instructions
#   [PIPE] NVIDIA, "Separate CUDA core pipeline for FP16 and FP32", forums.developer.nvidia.com/t/302018 (the FMA
#          pipes of GA100 / GA10x / GH100); Nsight Compute Profiling Guide, "Pipelines" (alu, fma, fmaheavy, xu)
#   [H100] NVIDIA H100 Tensor Core GPU Architecture whitepaper (132 SMs in the SXM5 part); H100 datasheet: 3.35 TB/s,
#          FP32 67 TFLOPS = 132 SMs x 128 lanes x 2 x 1.98 GHz (the boost clock used here)
#   [H200] NVIDIA H200 datasheet: 4.8 TB/s HBM3e, FP32 67 TFLOPS (the same GH100 with 132 SMs at 1.98 GHz)
#   [A100] NVIDIA A100 Tensor Core GPU Architecture whitepaper: 108 SMs, 1410 MHz boost; A100 80GB SXM datasheet:
#          2,039 GB/s, FP32 19.5 TFLOPS = 108 x 64 x 2 x 1.41 GHz
#   [L4]   NVIDIA L4 datasheet: 7,424 CUDA cores (58 SMs), 300 GB/s, FP32 30.3 TFLOPS = 58 x 128 x 2 x 2.04 GHz
#   [ADA]  NVIDIA Ada GPU Architecture whitepaper, RTX 4090: 128 SMs, 2520 MHz boost, 1,008 GB/s GDDR6X
# COPY_FRACTION: the share of the DRAM peak that a plain device-to-device copy reaches; 0.9 is an assumption
# (H100 SXM copies at ~3.0 of 3.35 TB/s, the figure issue 24 works with), to be replaced by a measured copy.
COPY_FRACTION = 0.90


@dataclass(frozen=True)
class Gpu:
    name: str
    arch: str
    sms: int
    boost_ghz: float
    dram_gbs: float
    fma_lanes: int  # FP32 lanes per SM (IMAD included on sm_80, where there is one FMA pipe)
    split_fma: bool  # fmaheavy + fmalite: IMAD on the heavy half only
    sources: str
    issue_lanes: int = 128
    alu_lanes: int = 64
    xu_lanes: int = 16
    lsu_lanes: int = 32
    copy_fraction: float = field(default=COPY_FRACTION)


GPUS = (
    Gpu("H100 SXM", "sm_90", 132, 1.98, 3350, 128, True, "[H100] [BPG] [PIPE]"),
    Gpu("H200", "sm_90", 132, 1.98, 4800, 128, True, "[H200] [H100] [BPG] [PIPE]"),
    Gpu("A100 SXM 80GB", "sm_80", 108, 1.41, 2039, 64, False, "[A100] [BPG] [PIPE]"),
    Gpu("L4", "sm_89", 58, 2.04, 300, 128, True, "[L4] [ADA] [BPG] [PIPE]"),
    Gpu("RTX 4090", "sm_89", 128, 2.52, 1008, 128, True, "[ADA] [BPG] [PIPE]"),
)

# Elements of DRAM traffic per element of output: inputs read + outputs written (a bias is read once per column).
TRAFFIC = {("gelu", "forward"): 2, ("gelu", "backward"): 3, ("bias_gelu", "forward"): 2,
           ("bias_gelu", "backward"): 3, ("geglu", "forward"): 3, ("geglu", "backward"): 5}  # fmt: skip


def pipe_cycles(profile: dict, gpu: Gpu) -> dict[str, float]:
    """Cycles per element per SM that each constraint needs (the largest one bounds the math)."""
    fma = profile["pipe_fma"] + profile["pipe_fma_heavy"]
    cycles = {
        "issue": profile["per_element"] / gpu.issue_lanes,
        "fma": fma / gpu.fma_lanes,
        "alu": profile["pipe_alu"] / gpu.alu_lanes,
        "xu": profile["pipe_xu"] / gpu.xu_lanes,
        "lsu": profile["pipe_lsu"] / gpu.lsu_lanes,
    }
    if gpu.split_fma:
        cycles["fma_heavy"] = profile["pipe_fma_heavy"] / (gpu.fma_lanes // 2)
    return cycles


def predict(profile: dict, gpu: Gpu, op: str, pass_: str, dtype: str) -> dict:
    """Seconds per element for the math (bound by its busiest constraint) and for the memory traffic at copy speed;
    the kernel takes the longer (perfect overlap), so its fraction of copy bandwidth is memory / that."""
    cycles = pipe_cycles(profile, gpu)
    bound = max(cycles, key=cycles.get)
    math_s = cycles[bound] / (gpu.sms * gpu.boost_ghz * 1e9)
    memory_s = TRAFFIC[(op, pass_)] * ELEMENT_BYTES[dtype] / (gpu.dram_gbs * 1e9 * gpu.copy_fraction)
    seconds = max(math_s, memory_s)
    # the instructions per element the math may take before it, not memory, bounds the kernel on this GPU
    budget = memory_s * gpu.sms * gpu.boost_ghz * 1e9 * gpu.issue_lanes
    return {"bottleneck": "memory" if memory_s >= math_s else bound, "fraction_of_copy": memory_s / seconds,
            "seconds_per_element": seconds, "issue_budget": budget}  # fmt: skip


def roofline(arch_sass: dict[str, str], reference_sass: dict[str, str]) -> list[dict]:
    """Rows of the model: every non-float64 elementwise kernel on every GPU whose arch was compiled, with the
    ATen-like kernel of the same shape where there is one (gelu and gelu_backward)."""
    counted = {arch: sass_kernels(text) for arch, text in arch_sass.items()}
    references = {arch: sass_kernels(text) for arch, text in reference_sass.items()}
    rows = []
    for gpu in GPUS:
        if gpu.arch not in counted:
            continue
        by_key = {(k["op"], k["pass"], k["mode"], k["dtype"], k["kind"]): k for k in references.get(gpu.arch, [])}
        for k in counted[gpu.arch]:
            if k["dtype"] == "float64" or k["kind"] == "column_sum" or k["per_element"] is None:
                continue
            model = predict(k, gpu, k["op"], k["pass"], k["dtype"])
            row = {"gpu": gpu.name, "arch": gpu.arch, "op": k["op"], "pass": k["pass"], "mode": k["mode"],
                   "dtype": k["dtype"], "kind": k["kind"], "elements_per_iteration": k["elements_per_iteration"],
                   "prologue": k["prologue"], "per_element": k["per_element"],
                   **{c: k[c] for c in CATEGORIES}, **model}  # fmt: skip
            reference = by_key.get((k["op"], k["pass"], k["mode"], k["dtype"], k["kind"]))
            if reference is not None and reference["per_element"] is not None:
                ref_model = predict(reference, gpu, k["op"], k["pass"], k["dtype"])
                row["aten_per_element"] = reference["per_element"]
                row["aten_bottleneck"] = ref_model["bottleneck"]
                row["ratio_to_aten"] = ref_model["seconds_per_element"] / model["seconds_per_element"]
            rows.append(row)
    return rows


ROOFLINE_COLUMNS = ("gpu", "arch", "op", "pass", "mode", "dtype", "kind", "elements_per_iteration", "prologue",
                    "per_element", *CATEGORIES, "issue_budget", "bottleneck", "fraction_of_copy", "aten_per_element",
                    "aten_bottleneck", "ratio_to_aten")  # fmt: skip


def write_roofline_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROOFLINE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{v:.4g}" if isinstance(v, float) else v) for key, v in row.items()})


def roofline_table(rows: list[dict], kinds=("vectorized", "rows")) -> str:
    """Markdown: per kernel, SASS instructions per element (sm_90 and the ATen-like kernel) and, per GPU, the
    predicted fraction of copy bandwidth with its bottleneck."""
    gpus = [g.name for g in GPUS if any(r["gpu"] == g.name for r in rows)]
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["kind"] in kinds:
            keyed.setdefault((r["op"], r["pass"], r["mode"], r["dtype"]), {})[r["gpu"]] = r
    lines = ["| kernel | instr/elem (sm_90) | ATen-like | " + " | ".join(gpus) + " |",
             "|---|---|---|" + "---|" * len(gpus)]  # fmt: skip
    for (op, pass_, mode, dtype), per_gpu in sorted(keyed.items()):
        first = per_gpu.get("H100 SXM") or next(iter(per_gpu.values()))
        aten = f"{first['aten_per_element']:.1f}" if "aten_per_element" in first else "-"
        cells = []
        for gpu in gpus:
            r = per_gpu.get(gpu)
            if r is None:
                cells.append("-")
                continue
            ratio = f", {r['ratio_to_aten']:.2f}x ATen" if "ratio_to_aten" in r else ""
            cells.append(f"{r['fraction_of_copy']:.2f} ({r['bottleneck']}{ratio})")
        lines.append(f"| {op} {pass_} {mode} {dtype} | {first['per_element']:.1f} | {aten} | " + " | ".join(cells))
    return "\n".join(line if line.endswith("|") else line + " |" for line in lines)


def main_roofline(archs: list[str], csv_path: Path) -> int:
    arch_sass = {arch: compile_sass(arch) for arch in archs}
    reference_sass = {arch: compile_reference_sass(arch) for arch in archs}
    rows = roofline(arch_sass, reference_sass)
    write_roofline_csv(rows, csv_path)
    print(f"SASS instructions per element of each kernel's main loop (fast path), nvcc {nvcc_version()}; predicted")
    print("fraction of copy bandwidth on each GPU (bottleneck), and the time of the ATen-like kernel / gelu_ext's:\n")
    print(roofline_table(rows))
    print(f"\n{len(rows)} rows (scalar kernels too, per class) in {csv_path}")
    return 0


def nvcc_version() -> str:
    out = subprocess.run([find_nvcc(), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"release ([\d.]+)", out)
    return found.group(1) if found else "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sm_90", help="the PTX table's architecture")
    p.add_argument("--roofline", action="store_true", help="SASS counts and the roofline model (see above)")
    p.add_argument("--archs", default="sm_80,sm_89,sm_90", help="--roofline: the architectures to compile")
    p.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "roofline.csv",
                   help="--roofline: where the rows go")  # fmt: skip
    args = p.parse_args(argv)
    if args.roofline:
        return main_roofline(args.archs.split(","), args.csv)
    rows = kernels(compile_ptx(args.arch))
    print(f"{'op':>9} {'pass':>9} {'mode':>5} {'dtype':>9} {'kernel':>11} {'f64 ops':>8} {'f32 ops':>8} "
          f"{'f32/element':>12}")  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["op"], r["pass"], r["mode"], r["dtype"], r["kind"])):
        per = f"{r['f32_ops_per_element']:.1f}" if r["f32_ops_per_element"] is not None else "-"
        counts = f"{r['f64_ops']:>8} {r['f32_ops']:>8} {per:>12}"
        print(f"{r['op']:>9} {r['pass']:>9} {r['mode']:>5} {r['dtype']:>9} {r['kind']:>11} {counts}")
    bad = [r for r in rows if r["dtype"] != "float64" and r["f64_ops"]]
    cpu = cpu_loops()
    print(f"\nCPU loops of the built extension: {len(cpu)}")
    for r in sorted(cpu, key=lambda r: (r["op"], r["pass"], r["mode"], r["dtype"], r["isa"])):
        loop = f"{r['op']:>9} {r['pass']:>9} {r['mode']:>5} {r['dtype']:>9} {r['isa']:>7}"
        print(f"{loop} f64 instructions: {r['f64_ops']:>4}, full-width vector instructions: {r['wide_ops']}")
    bad += [r for r in cpu if r["dtype"] != "float64" and r["f64_ops"]]
    if bad:
        print(f"{len(bad)} float/half/bfloat16 kernels contain FP64 instructions", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
