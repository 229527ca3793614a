"""Loads the compiled libraries, which register the ops, and explains what is missing.

`_C` (schemas and CPU kernels) always loads. `_cuda` (the CUDA kernels) loads only when the installed torch is a
CUDA build; elsewhere the CUDA dispatch key gets a Python kernel that says why there are no CUDA kernels. Both are
built against the LibTorch stable ABI (TORCH_TARGET_VERSION = MIN_TORCH), so they load on any torch from MIN_TORCH on,
whatever torch built them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

try:
    from . import _build_config
except ImportError:  # a source checkout that was never built
    _build_config = None

MIN_TORCH = "2.10"  # setup.py's MIN_TORCH: the stable ABI version the libraries target


def rebuild_command() -> str:
    """A command that rebuilds gelu_ext: from this checkout when the package is one (an editable or in-place build),
    else from a checkout or sdist the user names."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "setup.py").is_file() and (checkout / "csrc").is_dir():
        return f"pip install --no-build-isolation --no-deps -e {checkout}"
    return "pip install --force-reinstall --no-deps <path to a gelu_ext checkout or sdist>"


_REBUILD = rebuild_command()


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _load_core():
    if _version_tuple(torch.__version__) < _version_tuple(MIN_TORCH):
        raise ImportError(
            f"gelu_ext needs torch >= {MIN_TORCH} (its compiled core uses the LibTorch stable ABI of {MIN_TORCH}), "
            f"but torch {torch.__version__} is installed: pip install 'torch>={MIN_TORCH}'"
        )
    try:
        from . import _C
    except ImportError as error:
        if _build_config is None:
            raise ImportError(
                "gelu_ext's compiled core (gelu_ext._C) is missing: the package was not built. "
                f"Build it with: {_REBUILD}"
            ) from error
        raise ImportError(f"gelu_ext's compiled core failed to load ({error}). Rebuild it with {_REBUILD}") from error
    return _C


_C = _load_core()
_CUDA_LIBRARY = next(Path(__file__).parent.glob("_cuda.*so"), None)
# The Python CUDA kernels that report why there are no compiled ones; a torch.library.Library must stay alive.
_no_cuda_library: torch.library.Library | None = None


def _register_no_cuda_kernels(reason: str) -> None:
    global _no_cuda_library
    message = f"gelu_ext cannot run on a CUDA tensor: {reason}"

    def no_cuda_kernel(*args, **kwargs):
        raise RuntimeError(message)

    _no_cuda_library = torch.library.Library("gelu_ext", "IMPL")
    for name in ("gelu", "gelu_backward"):
        _no_cuda_library.impl(name, no_cuda_kernel, "CUDA")


def _load_cuda() -> str | None:
    """Loads the CUDA kernels where they can run; returns None, or why there are none."""
    if _CUDA_LIBRARY is None:
        return (
            "gelu_ext was built without CUDA kernels. Rebuild it on a machine with the CUDA toolkit (nvcc, "
            "CUDA_HOME) and a CUDA build of torch: GELU_EXT_FORCE_CUDA=1 pip install --force-reinstall --no-deps "
            "<path to a gelu_ext checkout or sdist>"
        )
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.ops.load_library(str(_CUDA_LIBRARY))
    except OSError as error:
        built = getattr(_build_config, "TORCH_CUDA_VERSION", None)
        reason = (
            f"its CUDA kernels (built with CUDA {built}) failed to load with torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}): {error}. Rebuild gelu_ext against this torch: {_REBUILD}"
        )
        warnings.warn(f"gelu_ext: {reason}", RuntimeWarning, stacklevel=3)
        return reason
    return None


_no_cuda_reason = _load_cuda()
if _no_cuda_reason is not None:
    _register_no_cuda_kernels(_no_cuda_reason)


def build_info() -> dict:
    """How this copy of gelu_ext was built and what it runs with: the torch it was built with and the oldest it
    loads on, whether CUDA kernels are loaded (and why not), their CUDA version and architectures, the CPU code
    path."""
    return {
        "torch": getattr(_build_config, "TORCH_VERSION", None),
        "min_torch": MIN_TORCH,
        "torch_running": torch.__version__,
        "with_cuda": _no_cuda_reason is None,
        "no_cuda_reason": _no_cuda_reason,
        "cuda_version": getattr(_build_config, "TORCH_CUDA_VERSION", None),
        "cuda_archs": getattr(_build_config, "CUDA_ARCHS", None),
        "cpu_capability": _C.cpu_capability(),
    }


def _parse_archs(spec: str) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """'8.0;9.0+PTX' -> ({(8, 0), (9, 0)}, {(9, 0)}): architectures with machine code, and with PTX."""
    sass, ptx = set(), set()
    for item in spec.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        name = item.removesuffix("+PTX")
        major, minor = (int(part) for part in name.rstrip("a").split(".")[:2])
        sass.add((major, minor))
        if item.endswith("+PTX"):
            ptx.add((major, minor))
    return sass, ptx


def missing_kernel_images() -> list[str]:
    """Names of visible GPUs this build has neither machine code nor usable PTX for."""
    archs = getattr(_build_config, "CUDA_ARCHS", None)
    if not (_no_cuda_reason is None and archs and torch.cuda.is_available()):
        return []
    sass, ptx = _parse_archs(archs)
    missing = []
    for index in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(index)
        # Machine code runs on the same major version with an equal or higher minor; PTX JIT-compiles upwards.
        runs = any(m == cap[0] and n <= cap[1] for m, n in sass) or any((m, n) <= cap for m, n in ptx)
        if not runs:
            missing.append(f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm_{cap[0]}{cap[1]})")
    return missing


_missing = missing_kernel_images()
if _missing:
    warnings.warn(
        f"gelu_ext was built for CUDA architectures {_build_config.CUDA_ARCHS!r}, which cannot run on "
        f"{', '.join(_missing)}. Rebuild with TORCH_CUDA_ARCH_LIST set for this GPU: {_REBUILD}",
        RuntimeWarning,
        stacklevel=2,
    )
