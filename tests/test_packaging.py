"""Build and install: the wheel installs into a fresh virtual environment and works; setup.py's switches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gelu_ext
from gelu_ext._extension import _parse_archs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = r"""
import math, sys, torch, gelu_ext
assert gelu_ext.__file__.startswith(sys.prefix), gelu_ext.__file__
info = gelu_ext.build_info()
assert info["with_cuda"] is False and info["torch"] == torch.__version__, info
y = gelu_ext.gelu(torch.tensor([-10.0, 0.0, 1.0]))
assert abs(y[0].item() - (-7.619853e-23)) < 1e-28 and y[1] == 0 and abs(y[2].item() - 0.8413447) < 1e-6, y
key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
try:
    torch.ops.gelu_ext.gelu.default.redispatch(key, torch.ones(2), "none")
except RuntimeError as error:
    assert "built without CUDA kernels" in str(error) and "GELU_EXT_FORCE_CUDA=1" in str(error), error
else:
    raise AssertionError("a CUDA call on a CPU-only build must fail")
print("smoke ok")
"""


def _copy_sources(dest: Path) -> Path:
    src = dest / "src"
    ignore = shutil.ignore_patterns("build", ".venv", "*.so", "_build_config.py", "__pycache__", "data", "runs", ".git")
    shutil.copytree(ROOT, src, ignore=ignore)
    return src


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_works(tmp_path):
    src = _copy_sources(tmp_path)
    env = {**os.environ, "GELU_EXT_FORCE_CPU": "1", "MAX_JOBS": "2"}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheels), str(src)],
        check=True,
        env=env,
    )
    (wheel,) = wheels.glob("gelu_ext-*.whl")
    # The build wrote nothing into the package sources it was built from (the copy has no build record or library).
    assert not (src / "gelu_ext" / "_build_config.py").exists()
    assert not list((src / "gelu_ext").glob("*.so"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # The fresh venv sees this environment's torch (a path entry only: no .pth hooks, so no editable gelu_ext).
    (site / "torch_from_parent.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True
    )
    result = subprocess.run([python, "-c", SMOKE], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "smoke ok" in result.stdout


def test_force_cuda_fails_loudly_without_a_toolkit(tmp_path):
    env = {**os.environ, "GELU_EXT_FORCE_CUDA": "1", "CUDA_HOME": str(tmp_path / "no-cuda-here")}
    result = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "GELU_EXT_FORCE_CUDA is set but CUDA kernels cannot be built" in result.stderr


def test_force_cpu_is_honoured():
    env = {**os.environ, "GELU_EXT_FORCE_CPU": "1"}
    result = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "building CPU-only extension (GELU_EXT_FORCE_CPU is set)" in result.stdout


def test_cuda_arch_list_parsing():
    assert _parse_archs("7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX") == (
        {(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)},
        {(12, 0)},
    )
    assert _parse_archs("9.0a 8.0") == ({(9, 0), (8, 0)}, set())


def test_build_config_matches_running_torch():
    from gelu_ext import _build_config

    assert _build_config.TORCH_VERSION == torch.__version__
    assert (_build_config.CUDA_ARCHS is not None) == gelu_ext.build_info()["with_cuda"]


def test_rebuild_advice_names_a_real_path_or_command():
    from gelu_ext._extension import rebuild_command

    command = rebuild_command()
    assert command.startswith("pip install --no-build-isolation")
    if " -e " in command:  # an in-place or editable build: the checkout it names is one
        checkout = Path(command.split(" -e ", 1)[1])
        assert (checkout / "setup.py").is_file() and (checkout / "csrc" / "gelu_math.h").is_file()
    else:
        assert "<path to a gelu_ext checkout or sdist>" in command


@pytest.mark.slow
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs a virtual environment for quickstart.sh to reuse")
def test_quickstart_does_not_rebuild_unchanged_sources():
    env = {**os.environ, "VENV": sys.prefix}
    outputs = []
    for _ in range(2):  # the first call may build (a fresh environment); the second must find nothing to do
        result = subprocess.run(["bash", "scripts/quickstart.sh", "build"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=1800)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    assert "build up to date" in outputs[1], outputs[1]
