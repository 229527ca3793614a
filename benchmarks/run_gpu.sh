#!/usr/bin/env bash
# Everything that needs a GPU, in one call: build for this GPU, run the tests (CUDA included), run them again
# under compute-sanitizer memcheck and racecheck, then benchmark. Logs and CSVs go to $OUT (default gpu-results/).
#
#   bash benchmarks/run_gpu.sh            # on a machine with an NVIDIA GPU, nvcc and a CUDA build of torch
#
# With a wheel in .whl/ (scripts/build_wheel.sh .whl on the build machine, carried along), it also installs that
# wheel unchanged and runs the op and CUDA tests against it.
#
# Uses the python3 on PATH as it is (no virtual environment): torch, pytest, hypothesis and triton must be there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
arch=$(python3 -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')")
status=0

echo "== build for sm_${arch/./}"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} GELU_EXT_FORCE_CUDA=1 \
  python3 setup.py -q build_ext --inplace > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
python3 -c "import gelu_ext; print(gelu_ext.build_info())"

echo "== tests"
python3 -m pytest -q -x -p no:cacheprovider tests/test_gelu.py tests/test_accuracy.py tests/test_gelu_cuda.py \
  tests/test_bias_gelu.py tests/test_geglu.py tests/test_fused_modules.py 2>&1 | tee "$out/pytest.log" | tail -5 || status=1

echo "== compute-sanitizer (memcheck, racecheck) over the CUDA tests"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gelu_cuda.py -k "bit_for_bit or stream or rows" > "$out/sanitizer-$tool.log" 2>&1
  rc=$?
  echo "$tool: exit $rc, $(grep -c 'ERROR SUMMARY: 0 errors' "$out/sanitizer-$tool.log") clean summaries," \
       "$(grep -E '^=+ ERROR SUMMARY' "$out/sanitizer-$tool.log" | sort | uniq -c | tr '\n' ' ')"
  [ $rc -eq 0 ] || status=1
done

# The release wheel built on the CPU machine (Python 3.11, another torch), when the call carried it in .whl/: installed
# unchanged into a venv on this machine's Python and torch, then the op and CUDA tests run against it from a directory
# without the checkout, so they import the wheel's gelu_ext.
wheel=$(ls .whl/gelu_ext-*.whl 2> /dev/null | head -1)
if [ -n "$wheel" ]; then
  echo "== the carried wheel: $wheel"
  wheel_dir=$(mktemp -d)
  python3 -m venv --system-site-packages "$wheel_dir/venv"
  "$wheel_dir/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel" > "$out/wheel-install.log" 2>&1 \
    || { tail -5 "$out/wheel-install.log"; status=1; }
  mkdir "$wheel_dir/tests" && cp tests/conftest.py tests/test_gelu.py tests/test_gelu_cuda.py tests/test_bias_gelu.py \
    tests/test_geglu.py "$wheel_dir/tests/"
  (cd "$wheel_dir" && venv/bin/python -c "import gelu_ext; print(gelu_ext.__file__, gelu_ext.build_info())" &&
    venv/bin/python -m pytest -q -p no:cacheprovider -m "not large_gpu" tests) 2>&1 | tee "$out/wheel-tests.log" \
    | tail -5
  grep -qE "[0-9]+ passed" "$out/wheel-tests.log" && ! grep -qE "[0-9]+ (failed|error)" "$out/wheel-tests.log" || status=1
fi

echo "== benchmarks"
python3 benchmarks/kernel_ops.py --arch "sm_${arch/./}" 2>&1 | tee "$out/kernel-ops.txt" | tail -20
# the roofline model's predictions for this architecture, to hold against the measured bandwidth below
python3 benchmarks/kernel_ops.py --roofline --archs "sm_${arch/./}" --csv "$out/roofline.csv" 2>&1 | tail -40
python3 benchmarks/bench_gelu.py --device cuda --sizes 28 --dtypes float32 bfloat16 float16 --approximate none tanh \
  --csv "$out/cuda-2p28.csv" 2>&1 | tee "$out/bench-2p28.txt" | tail -80
python3 benchmarks/bench_gelu.py --device cuda --sizes 12 --dtypes float32 --modes fwdbwd --approximate none \
  --csv "$out/cuda-2p12.csv" 2>&1 | tail -8
python3 benchmarks/bench_gelu.py --device cuda --accuracy 2>&1 | tail -12
# The fused ops' targets: >= 0.9x the copy ceiling on their own bytes, >= 1.8x (bias_gelu) / 1.6x (geglu) eager fwd.
python3 benchmarks/bench_fused.py --device cuda --dtypes float32 bfloat16 --approximate none tanh \
  --csv "$out/cuda-fused.csv" 2>&1 | tee "$out/bench-fused.txt" | tail -80
exit $status
