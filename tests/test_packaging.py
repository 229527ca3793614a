"""Build and install: one wheel, built once, passes the op tests on several torch releases in their own virtual
environments; setup.py's switches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import gelu_ext
from gelu_ext._extension import _parse_archs

ROOT = Path(__file__).resolve().parents[1]
# The torch releases the one wheel is tested on: the project's default (a CUDA build) and a CPU-only one. Both lie on
# these machines' local wheel store.
TORCH_MATRIX = ("2.14.1", "2.13.0+cpu")
# The op tests run against every installed wheel (they import gelu_ext from the venv, not from this checkout).
OP_TESTS = ("conftest.py", "test_gelu.py", "test_bias_gelu.py", "test_geglu.py", "test_reference.py")
# Venvs with torch and the test tools, kept between runs (a fresh machine, such as CI, creates them once). Each test
# reinstalls the wheel into them.
VENV_CACHE = Path(os.environ.get("GELU_EXT_TEST_VENVS", Path.home() / ".cache" / "gelu_ext-test-venvs"))

CHECK_INSTALL = r"""
import sys, torch, gelu_ext
assert gelu_ext.__file__.startswith(sys.prefix), gelu_ext.__file__
info = gelu_ext.build_info()
assert info["torch_running"] == torch.__version__ and info["min_torch"] == "2.10", info
assert info["with_cuda"] == (torch.version.cuda is not None and info["cuda_archs"] is not None), info
y = gelu_ext.gelu(torch.tensor([-10.0, 0.0, 1.0]))
assert abs(y[0].item() - (-7.619853e-23)) < 1e-28 and y[1] == 0 and abs(y[2].item() - 0.8413447) < 1e-6, y
if not info["with_cuda"]:  # the CUDA dispatch key explains itself
    key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    try:
        torch.ops.gelu_ext.gelu.default.redispatch(key, torch.ones(2), "none")
    except RuntimeError as error:
        assert "gelu_ext cannot run on a CUDA tensor" in str(error) and info["no_cuda_reason"] in str(error), error
    else:
        raise AssertionError("a CUDA call without CUDA kernels must fail")
print("install ok", info)
"""


def _copy_sources(dest: Path) -> Path:
    src = dest / "src"
    ignore = shutil.ignore_patterns("build", ".venv", "*.so", "_build_config.py", "__pycache__", "data", "runs", ".git")
    shutil.copytree(ROOT, src, ignore=ignore)
    return src


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The release wheel, built once by scripts/build_wheel.sh from a copy of the sources: pip with build isolation
    (the torch it installs for the build is not the one the tests run on), then auditwheel. With a CUDA toolkit it
    holds the CUDA library too, for one architecture (it is compiled here, not run)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MAX_JOBS="2", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    if gelu_ext.build_info()["with_cuda"]:
        env.update(GELU_EXT_FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0")
    else:
        env.update(GELU_EXT_FORCE_CPU="1")
    subprocess.run(["bash", "scripts/build_wheel.sh", str(tmp / "dist")], cwd=src, env=env, check=True)
    (built,) = (tmp / "dist").glob("gelu_ext-*.whl")
    # The build wrote nothing into the package sources it was built from (the copy has no build record or library).
    assert not (src / "gelu_ext" / "_build_config.py").exists()
    assert not list((src / "gelu_ext").glob("*.so"))
    return built


def _venv_with_torch(version: str) -> Path:
    venv = VENV_CACHE / f"torch-{version}"
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", f"torch=={version}", "pytest", "hypothesis", "mpmath", "numpy"],
            check=True,
        )
        ready.write_text(version)
    return python


@pytest.mark.slow
def test_wheel_is_one_stable_abi_binary(wheel):
    # cp310-abi3: one file for every CPython from 3.10 on; manylinux: auditwheel found nothing to bundle but torch's
    # own libraries (the glibc version in the tag is the build machine's).
    assert re.fullmatch(r"gelu_ext-0\.2\.0-cp310-abi3-manylinux_2_\d+_x86_64\.whl", wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "gelu_ext/_C.abi3.so" in names and "gelu_ext/_build_config.py" in names, names
    assert ("gelu_ext/_cuda.abi3.so" in names) == gelu_ext.build_info()["with_cuda"], names
    assert not [name for name in names if name.startswith(("csrc", "tests"))], names


@pytest.mark.slow
@pytest.mark.parametrize("torch_version", TORCH_MATRIX)
def test_the_same_wheel_passes_the_op_tests_on_each_torch(wheel, torch_version, tmp_path):
    python = _venv_with_torch(torch_version)
    # Only the wheel is installed; `pip check` then confirms that the venv's torch meets its requirement (torch>=2.10).
    install = subprocess.run(
        [python, "-m", "pip", "install", "--force-reinstall", "--no-index", "--find-links", str(wheel.parent),
         "gelu_ext", "--no-deps"], capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, "-c", CHECK_INSTALL], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"'torch_running': '{torch_version}" in result.stdout, result.stdout

    tests = tmp_path / "tests"
    tests.mkdir()
    for name in OP_TESTS:
        shutil.copy(ROOT / "tests" / name, tests / name)
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", str(tests)],
        capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


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
    assert _build_config.MIN_TORCH == gelu_ext.build_info()["min_torch"] == "2.10"
    assert (_build_config.CUDA_ARCHS is not None) == gelu_ext.build_info()["with_cuda"]


def test_rebuild_advice_names_a_real_path_or_command():
    from gelu_ext._extension import rebuild_command

    command = rebuild_command()
    assert command.startswith("pip install ")
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


def test_a_torch_older_than_the_stable_abi_target_is_refused_by_name():
    code = "import torch; torch.__version__ = '2.9.1+cu128'; import gelu_ext"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "gelu_ext needs torch >= 2.10" in result.stderr and "torch 2.9.1+cu128 is installed" in result.stderr


def test_declared_torch_requirement_matches_the_stable_abi_target():
    pyproject = (ROOT / "pyproject.toml").read_text()
    setup_py = (ROOT / "setup.py").read_text()
    assert 'dependencies = ["torch>=2.10"]' in pyproject and '"torch>=2.10"]' in pyproject.split("[project]")[0]
    assert "MIN_TORCH = (2, 10)" in setup_py
    assert gelu_ext.build_info()["min_torch"] == "2.10" and gelu_ext.__version__ == "0.2.0"
    assert 'version = "0.2.0"' in pyproject
