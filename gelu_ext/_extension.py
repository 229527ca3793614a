"""Loads the compiled core (`gelu_ext._C`), which registers the ops, and explains build mismatches."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

try:
    from . import _build_config
except ImportError:  # a source checkout that was never built
    _build_config = None


def rebuild_command() -> str:
    """A command that rebuilds gelu_ext against the installed torch: from this checkout when the package is one (an
    editable or in-place build), else from a checkout or sdist the user names."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "setup.py").is_file() and (checkout / "csrc").is_dir():
        return f"pip install --no-build-isolation --no-deps -e {checkout}"
    return "pip install --no-build-isolation --force-reinstall --no-deps <path to a gelu_ext checkout or sdist>"


_REBUILD = rebuild_command()


def _load():
    try:
        from . import _C
    except ImportError as error:
        if _build_config is None:
            raise ImportError(
                "gelu_ext's compiled extension (gelu_ext._C) is missing: the package was not built. "
                f"Build it with: {_REBUILD}"
            ) from error
        built = _build_config.TORCH_VERSION
        if built != torch.__version__:
            raise ImportError(
                f"gelu_ext was built against torch {built}, but torch {torch.__version__} is installed. "
                f"The C++ ABI differs between torch releases: rebuild gelu_ext with {_REBUILD}"
            ) from error
        raise ImportError(
            f"gelu_ext's compiled extension failed to load ({error}). Rebuild it with {_REBUILD}"
        ) from error
    return _C


_C = _load()


def build_info() -> dict:
    """How this copy of gelu_ext was built: torch version, CUDA version and architectures, CPU code path."""
    return {
        "torch": getattr(_build_config, "TORCH_VERSION", None),
        "with_cuda": bool(_C.with_cuda),
        "cuda_version": _C.cuda_version,
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
    if not (_C.with_cuda and archs and torch.cuda.is_available()):
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
