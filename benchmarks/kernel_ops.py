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
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
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
        template_args = pretty[: pretty.index(">(") + 1]  # not the parameter list (compute_t<...> names both types)
        scalar = next(name for name in SCALAR_TYPES if re.search(rf"[<,]\s*{re.escape(name)}\s*[,>]", template_args))
        dtype = SCALAR_TYPES[scalar]
        op = _OP.search(pretty)
        f32_ops = len(_F32.findall(chunk))
        per_element = None
        if "elementwise_vectorized" in pretty:
            kind = "vectorized"
            per_element = f32_ops / (vectors_per_thread * 16 // ELEMENT_BYTES[dtype])
        elif "elementwise_scalar" in pretty:
            kind = "scalar"
        elif "rows_kernel" in pretty:
            vec = int(_ROWS_VEC.search(pretty).group(1))
            kind = "rows" if vec > 1 else "rows_scalar"
            per_element = f32_ops / vec if vec > 1 else None
        else:
            kind = "column_sum"
        result.append({
            "name": pretty,
            "dtype": dtype,
            "op": {"Gelu": "gelu", "BiasGelu": "bias_gelu", "Geglu": "geglu"}[op.group(1)] if op else "-",
            "kind": kind,
            "mode": "tanh" if op and op.group(3) == "1" else "none",
            "pass": (op.group(2).lower() if op else "backward"),
            "f64_ops": len(_F64.findall(chunk)),
            "f32_ops": f32_ops,
            "f32_ops_per_element": per_element,
        })  # fmt: skip
    return result


_CPU_LOOP = re.compile(
    r"^[0-9a-f]+ <void gelu_ext::cpu::segment_(avx512|avx2)"
    r"<gelu_ext::(Gelu|BiasGelu|Geglu)(Forward|Backward)<\(gelu_ext::Approximate\)([01])>, (?:true|false), ([\w:]+),"
)
# packed or scalar double instructions, conversions included; not integer ones such as vpminsd (packed signed dwords)
_CPU_DOUBLE = re.compile(r"\s((?!v?p)\w+(?:pd|sd))\s")


def cpu_loops(library: str | None = None) -> list[dict]:
    """The AVX2 and AVX-512 loops of the built extension (objdump): per loop, its scalar type and how many
    instructions operate on doubles (movsd, a plain 8-byte move, does not count)."""
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
                           "dtype": dtype[scalar], "f64_ops": 0}  # fmt: skip
                loops.append(current)
        elif current is not None:
            found = _CPU_DOUBLE.search(line)
            if found and found.group(1) not in ("movsd", "vmovsd"):
                current["f64_ops"] += 1
    return loops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sm_90")
    args = p.parse_args(argv)
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
        print(f"{loop} f64 instructions: {r['f64_ops']}")
    bad += [r for r in cpu if r["dtype"] != "float64" and r["f64_ops"]]
    if bad:
        print(f"{len(bad)} float/half/bfloat16 kernels contain FP64 instructions", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
