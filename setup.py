"""Build gelu_ext's compiled libraries against the LibTorch stable ABI and the Python limited API.

  gelu_ext/_C.abi3.so      the op schemas and the CPU kernels, plus a tiny limited-API Python module
  gelu_ext/_cuda.abi3.so   the CUDA kernels, a library of its own that gelu_ext loads only on a CUDA build of torch

Both use only torch/csrc/stable and torch/headeronly, built with TORCH_TARGET_VERSION = MIN_TORCH (2.10): a wheel
built here with any newer torch loads on every torch from MIN_TORCH on, on every CPython from 3.10 on
(cp310-abi3), so `pip install .` works with build isolation too.

On glibc, every C++ translation unit starts with csrc/manylinux_compat.h, so that the libraries need nothing newer
than glibc 2.28 whatever glibc builds them: the wheel is manylinux_2_28, the platform of torch's own wheels.

CUDA kernels are built when a CUDA toolkit is found (CUDA_HOME / nvcc) *and* torch is a CUDA build. Whether a
GPU is visible does not matter: build machines often have none.

Environment switches:
  GELU_EXT_FORCE_CPU=1     build the CPU-only extension even where CUDA could be built
  GELU_EXT_FORCE_CUDA=1    build the CUDA kernels, or fail with the reason they cannot be built
  TORCH_CUDA_ARCH_LIST     GPU architectures, e.g. "9.0" or "8.0;9.0+PTX" (default: DEFAULT_CUDA_ARCHS below)
  MAX_JOBS                 parallel compile jobs (ninja)
  GELU_EXT_DEBUG=1         -O0 -g
"""

import glob
import os
import platform
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
# Every architecture CUDA 13 can target from Turing on, plus PTX of the newest so later GPUs JIT-compile it.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
# The oldest torch whose stable ABI covers everything csrc/ uses (torch::stable::parallel_for, empty, new_empty,
# std::string arguments: 2.10). Keep in step with pyproject.toml's dependency and gelu_ext/_extension.py.
MIN_TORCH = (2, 10)
TORCH_TARGET_VERSION = f"0x{MIN_TORCH[0]:02x}{MIN_TORCH[1]:02x}000000000000"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_cuda_home() -> None:
    """Point CUDA_HOME at the toolkit before torch guesses it.

    torch derives CUDA_HOME from the nvcc on PATH; when that nvcc is a wrapper script (as in /usr/local/bin),
    the guess is /usr/local and linking fails with "cannot find -lcudart". Use the toolkit the wrapper runs.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [Path("/usr/local/cuda")]
    if nvcc:
        candidates.insert(0, Path(os.path.realpath(nvcc)).parent.parent)
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return


_find_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _cuda_decision() -> tuple[bool, str]:
    toolkit = cpp_extension.CUDA_HOME
    has_nvcc = toolkit is not None and (Path(toolkit) / "bin" / "nvcc").exists()
    if _flag("GELU_EXT_FORCE_CPU"):
        return False, "GELU_EXT_FORCE_CPU is set"
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif not has_nvcc:
        reason = "no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)"
    else:
        return True, f"CUDA toolkit at {toolkit}, torch built with CUDA {torch.version.cuda}"
    if _flag("GELU_EXT_FORCE_CUDA"):
        sys.exit(f"gelu_ext: GELU_EXT_FORCE_CUDA is set but CUDA kernels cannot be built: {reason}")
    return False, reason


def _is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _manylinux_compile_args() -> list[str]:
    """Bind to the symbol versions glibc 2.28 has (csrc/manylinux_compat.h says which and why), whatever glibc the
    build machine has: the wheel is manylinux_2_28, like torch's own, and so is a build from a checkout."""
    return ["-include", str(ROOT / "csrc" / "manylinux_compat.h")] if _is_glibc() else []


def _manylinux_link_args() -> list[str]:
    # dlsym@GLIBC_2.2.5 lives in libdl.so.2 before glibc 2.34 (in libc after): depend on it explicitly, as torch's
    # libraries do, whether or not the linker was told --as-needed.
    return ["-Wl,--push-state,--no-as-needed,-l:libdl.so.2,--pop-state"] if _is_glibc() else []


def _extensions():
    with_cuda, reason = _cuda_decision()
    debug = _flag("GELU_EXT_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    stable = [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}"]
    # -ffp-contract=off: no silent a*b+c fusion, so every CPU instruction set rounds identically.
    # -fvisibility=hidden: the libraries export only PyInit__C; the helpers both compile in do not clash.
    cxx = [
        *opt,
        *stable,
        "-ffp-contract=off",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fvisibility=hidden",
        "-Wall",
        "-Wno-unknown-pragmas",
    ]
    cxx += _manylinux_compile_args()
    link = _manylinux_link_args()
    print(f"gelu_ext: building {'CUDA' if with_cuda else 'CPU-only'} extension ({reason})", flush=True)
    extensions = [
        cpp_extension.CppExtension(
            "gelu_ext._C",
            ["csrc/gelu_ops.cpp", "csrc/python_module.cpp", *sorted(glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            py_limited_api=True,
        )
    ]
    if not with_cuda:
        return extensions, None

    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    # USE_CUDA declares the AOTI shim's CUDA functions (the current stream). --fmad=false: the same roundings as the
    # host code, so CPU and CUDA results are bit-identical for float.
    extensions.append(
        cpp_extension.CUDAExtension(
            "gelu_ext._cuda",
            sorted(glob.glob("csrc/cuda/*.cpp", root_dir=ROOT) + glob.glob("csrc/cuda/*.cu", root_dir=ROOT)),
            extra_compile_args={
                "cxx": [*cxx, "-DUSE_CUDA"],
                "nvcc": [*opt, "--fmad=false", "-lineinfo", *_manylinux_compile_args()],
            },
            extra_link_args=link,
            py_limited_api=True,
        )
    )
    return extensions, archs


def _write_build_config(package_dir: Path, cuda_archs) -> None:
    """Record what this build was made against, so that import can explain a mismatch."""
    text = (
        "# Generated by setup.py at build time. Do not edit.\n"
        f"TORCH_VERSION = {torch.__version__!r}  # built with\n"
        f"MIN_TORCH = {'.'.join(map(str, MIN_TORCH))!r}  # loads on this torch and newer (stable ABI target)\n"
        f"TORCH_CUDA_VERSION = {torch.version.cuda if cuda_archs else None!r}\n"
        f"CUDA_ARCHS = {cuda_archs!r}\n"
    )
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / "_build_config.py").write_text(text)


extensions, cuda_archs = _extensions()


class BuildExtension(cpp_extension.BuildExtension):
    """torch's ninja-based build_ext, which also records what the build was made against."""

    def run(self):
        # In-place and editable builds run from the source tree, so it gets the record; any other build (a wheel)
        # writes only into its build directory: building a wheel must not change the checkout it was built from.
        if self.inplace or getattr(self, "editable_mode", False):
            _write_build_config(ROOT / "gelu_ext", cuda_archs)
            if cuda_archs is None:  # a CPU-only rebuild: CUDA kernels left from an earlier build would still load
                for stale in (ROOT / "gelu_ext").glob("_cuda.*so"):
                    stale.unlink()
        if not self.inplace:
            _write_build_config(Path(self.build_lib) / "gelu_ext", cuda_archs)  # build_py already ran
        super().run()


setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},  # the wheel's tag: cp310-abi3
)
