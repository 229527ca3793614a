"""Build and install: one wheel, built once, passes the op tests on several torch releases in their own virtual
environments; setup.py's switches."""

from __future__ import annotations

import importlib.resources
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import gelu_ext
from gelu_ext._extension import _parse_archs

ROOT = Path(__file__).resolve().parents[1]
VERSION = gelu_ext.__version__
# The platform of torch's own Linux wheels: gelu_ext installs wherever they do (glibc 2.28 on).
MANYLINUX = "manylinux_2_28"
# Libraries the process has loaded before gelu_ext: torch's own and the CUDA runtime. scripts/build_wheel.sh keeps
# auditwheel from bundling them; they are not manylinux system libraries.
TORCH_PROVIDED = re.compile(r"lib(c10|c10_cuda|torch|torch_cpu|torch_cuda)\.so|libcudart\.so\.\d+")
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
    # *.egg-info: setuptools would add every file its SOURCES.txt lists to an sdist, whatever MANIFEST.in says.
    ignore = shutil.ignore_patterns(
        "build", ".venv", "*.so", "_build_config.py", "__pycache__", "data", "runs", ".git", "*.egg-info"
    )
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


def _manylinux_policy() -> dict:
    """auditwheel's own definition of the manylinux_2_28 platform: the system libraries a wheel may use and, for
    this machine's architecture, the symbol versions of each (GLIBC, GLIBCXX, CXXABI, GCC, ...)."""
    policies = json.loads((importlib.resources.files("auditwheel") / "policy" / "manylinux-policy.json").read_text())
    (policy,) = [policy for policy in policies if policy["name"] == MANYLINUX]
    return {"libraries": set(policy["lib_whitelist"]), "versions": policy["symbol_versions"][platform.machine()]}


def _version_needs(library: Path) -> dict[str, set[str]]:
    """The symbol versions a library needs, per library (its .gnu.version_r section): what the dynamic linker checks
    when it loads the library."""
    text = subprocess.check_output(["readelf", "--version-info", "--wide", str(library)], text=True)
    needs: dict[str, set[str]] = {}
    versions: set[str] = set()
    for line in text.split(".gnu.version_r", 1)[-1].splitlines() if ".gnu.version_r" in text else []:
        if match := re.search(r"\bFile: (\S+)", line):
            versions = needs.setdefault(match.group(1), set())
        elif match := re.search(r"\bName: (\S+)", line):
            versions.add(match.group(1))
    return needs


def _needed_libraries(library: Path) -> list[str]:
    dynamic = subprocess.check_output(["readelf", "--dynamic", "--wide", str(library)], text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)


def _symbols_needing(library: Path, version: str) -> list[str]:
    table = subprocess.check_output(["objdump", "--dynamic-syms", str(library)], text=True)
    return sorted(set(re.findall(rf"\({re.escape(version)}\)\s+(\S+)$", table, flags=re.MULTILINE)))


def manylinux_violations(library: Path) -> list[str]:
    """What keeps a library off manylinux_2_28: a system library outside the policy, or a symbol version newer
    than the policy's (GLIBC_2.34, GLIBCXX_3.4.30, GLIBC_PRIVATE ...), naming the symbols that need it."""
    policy = _manylinux_policy()
    problems = [
        f"needs {name}, neither a manylinux system library nor torch's"
        for name in _needed_libraries(library)
        if name not in policy["libraries"] and not TORCH_PROVIDED.fullmatch(name)
    ]
    for needed, versions in sorted(_version_needs(library).items()):
        if needed not in policy["libraries"]:
            continue  # torch's and CUDA's libraries: torch's own wheels set their requirements
        for version in sorted(versions):
            family, _, number = version.partition("_")
            if number not in policy["versions"].get(family, ()):
                problems.append(f"{needed} {version}: {_symbols_needing(library, version)}")
    return problems


def _built_libraries() -> list[Path]:
    libraries = sorted(Path(gelu_ext.__file__).parent.glob("_*.so"))
    if not libraries:
        pytest.skip("gelu_ext is not built in place")
    return libraries


@pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("objdump") is None, reason="needs binutils")
def test_the_build_from_a_checkout_is_manylinux_2_28():
    # The libraries `pip install -e .` built, on whatever glibc this machine has: setup.py binds them to glibc
    # 2.28's symbol versions (csrc/manylinux_compat.h) for a checkout as for the wheel.
    policy = _manylinux_policy()
    assert max(policy["versions"]["GLIBC"], key=lambda v: tuple(map(int, v.split(".")))) == "2.28", policy
    for library in _built_libraries():
        assert _version_needs(library).get("libc.so.6"), f"{library.name}: no glibc symbol versions read"
        assert not manylinux_violations(library), (library.name, manylinux_violations(library))


@pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("cc") is None, reason="needs binutils and cc")
@pytest.mark.skipif(
    not re.match(r"2\.(3[4-9]|[4-9]\d)", platform.libc_ver()[1]), reason="needs a glibc >= 2.34 (dlsym@GLIBC_2.34)"
)
def test_manylinux_check_names_a_symbol_newer_than_glibc_2_28(tmp_path):
    # Without csrc/manylinux_compat.h, a dlsym call binds to dlsym@GLIBC_2.34 on this glibc: the check must say so.
    source = tmp_path / "lookup.c"
    source.write_text("#include <dlfcn.h>\nvoid *lookup(const char *name) { return dlsym(RTLD_DEFAULT, name); }\n")
    library = tmp_path / "liblookup.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    assert manylinux_violations(library) == ["libc.so.6 GLIBC_2.34: ['dlsym']"]


@pytest.mark.slow
def test_wheel_is_one_stable_abi_binary(wheel, tmp_path):
    # cp310-abi3: one file for every CPython from 3.10 on; manylinux_2_28: auditwheel found nothing to bundle but
    # torch's own libraries, and no symbol version newer than that platform allows.
    assert wheel.name == f"gelu_ext-{VERSION}-cp310-abi3-{MANYLINUX}_{platform.machine()}.whl", wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "gelu_ext/_C.abi3.so" in names and "gelu_ext/_build_config.py" in names, names
    assert ("gelu_ext/_cuda.abi3.so" in names) == gelu_ext.build_info()["with_cuda"], names
    assert not [name for name in names if name.startswith(("csrc", "tests"))], names
    libraries = [name for name in names if name.endswith(".so")]
    zipfile.ZipFile(wheel).extractall(tmp_path, members=libraries)
    for name in libraries:
        assert not manylinux_violations(tmp_path / name), (name, manylinux_violations(tmp_path / name))

    # auditwheel's own verdict on the symbol versions. (Its overall tag is linux_x86_64: it counts torch's
    # libraries, which the wheel must not bundle, as external.)
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)],
                          capture_output=True, text=True)  # fmt: skip
    assert show.returncode == 0, show.stderr
    report = json.loads(show.stdout)
    assert report["version"] == 1, f"auditwheel show --json changed its format: {report}"
    assert int(re.fullmatch(r"manylinux_2_(\d+)_\w+", report["sym_tag"]).group(1)) <= 28, report["sym_tag"]
    eliminate = report["policy_upgrades"][f"{MANYLINUX}_{platform.machine()}"]["libs_to_eliminate"]
    assert all(TORCH_PROVIDED.fullmatch(name) for name in eliminate), eliminate


def _passes_the_op_tests(python: Path, torch_version: str, test_sources: Path, tmp_path: Path) -> None:
    """The installed gelu_ext (not a checkout's) loads, explains itself and passes the op tests in test_sources."""
    # `pip check` confirms that the venv's torch meets gelu_ext's requirement (torch>=2.10).
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, "-c", CHECK_INSTALL], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"'torch_running': '{torch_version}" in result.stdout, result.stdout
    metadata = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('gelu_ext'))"],
                              capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert metadata.stdout.strip() == VERSION, metadata.stdout + metadata.stderr

    tests = tmp_path / "tests"  # holds nothing but the op tests: no gelu_ext sources beside them to import instead
    tests.mkdir()
    for name in OP_TESTS:
        shutil.copy(test_sources / name, tests / name)
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", str(tests)],
        capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


@pytest.mark.slow
@pytest.mark.parametrize("torch_version", TORCH_MATRIX)
def test_the_same_wheel_passes_the_op_tests_on_each_torch(wheel, torch_version, tmp_path):
    python = _venv_with_torch(torch_version)
    # Only the wheel is installed, from no index: nothing else may come with it.
    install = subprocess.run(
        [python, "-m", "pip", "install", "--force-reinstall", "--no-index", "--find-links", str(wheel.parent),
         "gelu_ext", "--no-deps"], capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr
    _passes_the_op_tests(python, torch_version, ROOT / "tests", tmp_path)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist as `python -m build --sdist` makes it, from a copy of the sources that holds build outputs (a
    library and a build record), which must stay out of it. --no-isolation: making an sdist compiles nothing, and
    installing it below builds with full isolation, which checks pyproject.toml's build requirements."""
    tmp = tmp_path_factory.mktemp("sdist")
    src = _copy_sources(tmp)
    (src / "gelu_ext" / "_C.abi3.so").write_bytes(b"a stale build output")
    (src / "gelu_ext" / "_build_config.py").write_text("TORCH_VERSION = 'a stale build record'\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = (tmp / "dist").glob("gelu_ext-*.tar.gz")
    return built


@pytest.mark.slow
def test_sdist_holds_the_sources_and_no_build_output(sdist):
    assert sdist.name == f"gelu_ext-{VERSION}.tar.gz", sdist.name
    prefix = f"gelu_ext-{VERSION}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
        pkg_info = archive.extractfile(prefix + "PKG-INFO").read().decode()
    sources = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "csrc").rglob("*")
        if path.is_file() and path.suffix in {".h", ".cpp", ".cu", ".cuh"}
    }
    assert "csrc/manylinux_compat.h" in sources and sources <= names, sorted(sources - names)
    assert {"setup.py", "pyproject.toml", "README.md", "CHANGELOG.md", "gelu_ext/_version.py"} <= names
    assert {f"tests/{name}" for name in OP_TESTS} <= names
    assert not [name for name in names if name.endswith((".so", ".o", ".pyc")) or "_build_config" in name], names
    assert f"\nVersion: {VERSION}\n" in pkg_info, pkg_info[:500]


@pytest.mark.slow
def test_sdist_installs_with_pip_and_passes_the_op_tests(sdist, tmp_path):
    # `pip install gelu_ext-<version>.tar.gz`, as a user runs it: pip builds in an isolated environment with the
    # torch that pyproject.toml asks for. CPU-only (GELU_EXT_FORCE_CPU): the CUDA build of the same setup.py is the
    # wheel's and the checkout's, and compiling seven GPU architectures again would take CI's two cores minutes.
    torch_version = next(version for version in TORCH_MATRIX if version.endswith("+cpu"))
    python = _venv_with_torch(torch_version)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GELU_EXT_FORCE_CPU="1", MAX_JOBS="2", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    install = subprocess.run([python, "-m", "pip", "install", "--force-reinstall", "--no-deps", str(sdist)],
                             capture_output=True, text=True, env=env)  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    unpacked = tmp_path / "unpacked"
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    # The op tests the sdist ships run against what it installed.
    (tmp_path / "run").mkdir()
    _passes_the_op_tests(python, torch_version, unpacked / f"gelu_ext-{VERSION}" / "tests", tmp_path / "run")


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
    assert gelu_ext.build_info()["min_torch"] == "2.10"


def test_the_version_is_written_once():
    # gelu_ext/_version.py alone: pyproject.toml reads it at build time, gelu_ext imports it, CHANGELOG.md has it.
    version_file = (ROOT / "gelu_ext" / "_version.py").read_text()
    assert re.findall(r'^__version__ = "([^"]+)"$', version_file, flags=re.MULTILINE) == [VERSION]
    pyproject = (ROOT / "pyproject.toml").read_text()
    project_table = pyproject.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project_table and not re.search(r"^version\s*=", project_table, flags=re.M)
    assert 'version = { attr = "gelu_ext._version.__version__" }' in pyproject
    assert "__version__ = " not in (ROOT / "gelu_ext" / "__init__.py").read_text()
    assert re.search(rf"^## {re.escape(VERSION)}\b", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
