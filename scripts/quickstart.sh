#!/usr/bin/env bash
# Set up a virtual environment with everything gelu_ext needs, build it, then run one job.
#
#   bash scripts/quickstart.sh train [train_lenet.py args...]   # LeNet-5 on MNIST with gelu_ext.GELU
#   bash scripts/quickstart.sh test  [pytest args...]           # ruff + the test suite
#
# Works on a fresh machine with Python >= 3.10 and no torch. Environment: VENV (default .venv), PYTHON
# (default python3), TORCH_SPEC (default torch==2.14.1 torchvision==0.29.1), plus setup.py's switches
# (GELU_EXT_FORCE_CPU, GELU_EXT_FORCE_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS).
set -euo pipefail

job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
  train | test) ;;
  *) echo "usage: bash scripts/quickstart.sh {train|test} [args...]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

# shellcheck disable=SC2086
python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1} \
  setuptools wheel ninja pybind11 pytest hypothesis mpmath ruff tqdm tensorboard matplotlib
python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import gelu_ext; print('gelu_ext', gelu_ext.__version__, gelu_ext.build_info())"

if [ "$job" = train ]; then
  exec python examples/train_lenet.py "$@"
fi
ruff check .
ruff format --check .
exec python -m pytest "$@"
