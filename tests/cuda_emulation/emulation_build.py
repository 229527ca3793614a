"""Builds the CUDA emulation library: csrc/cuda/*_kernels.cu compiled as C++ by the host compiler, with emulation.h
force-included, plus harness.cpp, linked into one shared library for ctypes. Test-only: nothing here is in the wheel.

The library is cached under build/cuda-emulation/ (or $GELU_EXT_EMULATION_CACHE), keyed by a hash of every source it
is built from, the flags and the compiler's version, so a second run with unchanged sources does not compile.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CUDA_DIR = ROOT / "csrc" / "cuda"

# The host build's floating-point flags (setup.py): -ffp-contract=off stands for nvcc's --fmad=false, so that the
# emulated kernels round exactly as the CPU kernels do and as the GPU build does.
COMMON_FLAGS = [
    "-std=c++17",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-pthread",
    "-fvisibility=hidden",
    "-Wall",
    "-Wno-unknown-pragmas",
]
VARIANTS = {
    "plain": ["-O2"],
    # memcheck's and the misaligned-address check's host equivalents; the first report aborts the process.
    "asan": [
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined,alignment",
        "-fno-sanitize-recover=all",
    ],
}


def find_cuda_include() -> Path | None:
    """The CUDA toolkit's headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h), which the emulation compiles against."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    nvcc = shutil.which("nvcc")
    if nvcc:
        include = Path(os.path.realpath(nvcc)).parent.parent / "include"
        if (include / "cuda_runtime.h").exists():
            return include
    return None


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def sources() -> list[Path]:
    """The translation units: every op's kernels file, unchanged, and the harness."""
    return [*sorted(CUDA_DIR.glob("*_kernels.cu")), HERE / "harness.cpp"]


def compile_command(source: Path, output: Path, variant: str, cuda_include: Path) -> list[str]:
    language = ["-x", "c++"] if source.suffix == ".cu" else []
    return [
        compiler(),
        *language,
        "-include",
        str(HERE / "emulation.h"),
        "-I",
        str(ROOT / "csrc"),
        "-I",
        str(cuda_include),
        *COMMON_FLAGS,
        *VARIANTS[variant],
        "-c",
        str(source),
        "-o",
        str(output),
    ]


def _key(variant: str, cuda_include: Path) -> str:
    digest = hashlib.sha256()
    inputs = sorted({*CUDA_DIR.iterdir(), *HERE.iterdir(), ROOT / "csrc" / "gelu_math.h"})  # this file too
    for path in inputs:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    version = subprocess.run([compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    digest.update(f"{variant} {COMMON_FLAGS} {VARIANTS[variant]} {cuda_include} {version}".encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("GELU_EXT_EMULATION_CACHE", ROOT / "build" / "cuda-emulation"))


def build(variant: str = "plain", jobs: int | None = None) -> Path:
    """The path of the emulation library for `variant` ("plain" or "asan"), compiled if not cached.

    Raises RuntimeError with the compiler's output when a file does not compile (for example when a kernel uses a
    construct the emulation cannot run: emulation.h names it) or the library does not link."""
    cuda_include = find_cuda_include()
    if cuda_include is None:
        raise FileNotFoundError("the CUDA toolkit's headers (cuda_runtime.h): set CUDA_HOME")
    library = cache_dir() / f"{variant}-{_key(variant, cuda_include)}" / "libgelu_ext_cuda_emulation.so"
    if library.exists():
        return library
    library.parent.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=library.parent.parent))
    try:
        objects = [work / f"{source.stem}.o" for source in sources()]
        commands = [compile_command(s, o, variant, cuda_include) for s, o in zip(sources(), objects, strict=True)]
        jobs = jobs or int(os.environ.get("MAX_JOBS", min(4, os.cpu_count() or 1)))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), commands))
        failed = [(c, r) for c, r in zip(commands, results, strict=True) if r.returncode != 0]
        if failed:
            raise RuntimeError("\n".join(f"$ {' '.join(c)}\n{r.stderr}" for c, r in failed))
        sanitize = [f for f in VARIANTS[variant] if f.startswith("-fsanitize=")]
        link = [
            compiler(),
            "-shared",
            "-pthread",
            *sanitize,
            "-Wl,--no-undefined",
            "-Wl,-Bsymbolic",
            *map(str, objects),
            "-o",
            str(work / library.name),
        ]
        result = subprocess.run(link, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"$ {' '.join(link)}\n{result.stderr}")
        for obj in objects:
            obj.unlink()
        try:
            work.rename(library.parent)  # atomic: a concurrent or interrupted build never leaves a partial library
        except OSError:
            if not library.exists():
                raise
        return library
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sanitizer_runtime() -> str:
    """The AddressSanitizer runtime to LD_PRELOAD into a Python process that loads the "asan" library."""
    path = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return path.stdout.strip()
