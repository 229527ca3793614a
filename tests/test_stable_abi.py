"""The compiled libraries depend on libtorch only through its stable ABI: one build loads on every torch from 2.10 on.

Two views: the sources include no header outside the stable set, and the built libraries import no C++ symbol of
torch (every torch symbol they use is a C function of the versioned shim), no libtorch_python and no pybind11.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import gelu_ext

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(gelu_ext.__file__).parent
# Headers of the LibTorch stable ABI: the stable C++ wrappers, the header-only types and the C shims they wrap.
STABLE_HEADERS = ("torch/csrc/stable/", "torch/headeronly/", "torch/csrc/inductor/aoti_torch/c/shim.h")
TORCH_HEADER_ROOTS = ("torch/", "ATen/", "c10/", "caffe2/", "pybind11/")
# Mangled namespaces of torch's C++ API (at::, c10::, torch:: outside the header-only code, caffe2::, pybind11::).
UNSTABLE_SYMBOL = re.compile(r"_ZN(K)?(2at|3c10|5torch|6caffe2|8pybind11)")


def _includes():
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path.suffix in {".h", ".cpp", ".cu", ".cuh"}:
            for line in path.read_text().splitlines():
                match = re.match(r"\s*#\s*include\s*[<\"]([^>\"]+)[>\"]", line)
                if match:
                    yield path.relative_to(ROOT), match.group(1)


def test_sources_include_only_stable_torch_headers():
    includes = list(_includes())
    assert any(header.startswith("torch/csrc/stable/") for _, header in includes)
    offending = [
        f"{path}: {header}"
        for path, header in includes
        if (header.startswith(TORCH_HEADER_ROOTS) and not header.startswith(STABLE_HEADERS))
        or (header in {"torch/extension.h", "Python.h"} and path.name != "python_module.cpp")
    ]
    assert not offending, offending


def _libraries():
    libraries = sorted(PACKAGE.glob("_*.so"))
    if not libraries:
        pytest.skip("gelu_ext is not built in place")
    return libraries


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("readelf") is None, reason="needs binutils")
def test_libraries_import_no_torch_cpp_symbol():
    for library in _libraries():
        undefined = subprocess.check_output(["nm", "-D", "--undefined-only", str(library)], text=True).split()
        unstable = sorted({name for name in undefined if UNSTABLE_SYMBOL.match(name)})
        assert not unstable, f"{library.name} uses torch's C++ ABI: {unstable[:10]}"
        shims = [name for name in undefined if name.startswith(("aoti_torch_", "torch_"))]
        assert shims, f"{library.name} calls no stable shim function: is it linked at all?"
        needed = subprocess.check_output(["readelf", "-d", str(library)], text=True)
        assert "torch_python" not in needed and "libpython" not in needed, needed


def test_libraries_are_named_for_the_stable_abi():
    assert [library.name for library in _libraries()] == sorted(
        ["_C.abi3.so", *(["_cuda.abi3.so"] if gelu_ext.build_info()["with_cuda"] else [])]
    )
