"""The docs stay true: every relative link, file path and command that README.md and docs/ name exists (a script's
options included), the version and platform they name are the package's, the accuracy figures the tests guard
(gelu_ext.testing.MEASURED_MAX_ULP, GEGLU_MEASURED_MAX_ULP) read the same wherever they appear, and a README table
that repeats rows of a docs page repeats them exactly."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

import gelu_ext
from gelu_ext.testing import GEGLU_MEASURED_MAX_ULP, MEASURED_MAX_ULP

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TORCH_INCLUDE = Path(torch.__file__).parent / "include"
# What the docs name but a checkout does not hold until a command makes it, each with the file that makes it.
OUTPUTS = {
    "dist/": "scripts/build_wheel.sh",
    ".whl/": "benchmarks/run_gpu.sh",
    "gpu-results/": "benchmarks/run_gpu.sh",
    "gelu_ext/_C.abi3.so": "setup.py",
    "gelu_ext/_cuda.abi3.so": "setup.py",
    "examples/runs/": "examples/train_lenet.py",
}
# A file extension the docs name files by; a bare name with one (gelu_ops.cpp) is looked for anywhere in the tree.
FILE_SUFFIXES = ("py", "sh", "cpp", "h", "cu", "cuh", "md", "csv", "png", "toml", "in", "json", "txt")
PATH_TOKEN = re.compile(rf"[\w.-]*(/[\w.*-]+)+/?|[\w-]+\.({'|'.join(FILE_SUFFIXES)})")
SKIPPED_TREES = {".venv", "build", ".git", "__pycache__"}


def _doc_id(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def _split_code(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The prose (fenced blocks blanked out) and the fenced blocks as (language, body)."""
    blocks = []

    def keep(match):
        blocks.append((match.group(1), match.group(2)))
        return "\n" * match.group(0).count("\n")

    prose = re.sub(r"^```(\w*)\n(.*?)^```$", keep, text, flags=re.M | re.S)
    return prose, blocks


def _inline_code(prose: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    prose, _ = _split_code(doc.read_text())
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", prose, flags=re.M)}


@functools.cache
def _tree_names() -> frozenset[str]:
    names = set()
    for _, directories, files in os.walk(ROOT):
        directories[:] = [name for name in directories if name not in SKIPPED_TREES]
        names.update(files)
    return frozenset(names)


def _path_problem(token: str) -> str | None:
    """Why a path the docs name is wrong, or None."""
    token = token.rstrip(".,;:")
    if "<" in token or token.startswith(("/", "http", "$", "~")) or re.fullmatch(r"\.\w+", token):
        return None  # a placeholder (tests/test_<op>.py), an absolute or remote path, a bare extension
    for output, maker in OUTPUTS.items():
        if token == output or token.startswith(output):
            assert output.strip("/") in (ROOT / maker).read_text(), f"{maker} does not make {output}"
            return None
    if token.startswith("torch/"):
        return None if (TORCH_INCLUDE / token).exists() else f"{token}: not in torch's headers"
    if "/" not in token:
        return None if token in _tree_names() else f"{token}: no such file in the tree"
    if "*" in token:
        return None if list(ROOT.glob(token.rstrip("/"))) else f"{token}: matches nothing"
    return None if (ROOT / token).exists() else f"{token}: no such file or directory"


def _commands(doc: Path) -> list[str]:
    prose, blocks = _split_code(doc.read_text())
    lines = [line for language, body in blocks if language in {"bash", "sh", "console"} for line in body.splitlines()]
    lines += [code for code in _inline_code(prose) if re.match(r"(python3?|bash|pip|g\+\+|torchrun) ", code)]
    commands = []
    for line in lines:
        line = re.sub(r"\s+#.*$", "", line).strip()
        commands += [part.strip() for part in re.split(r"&&|\|\||\|", line) if part.strip()]
    return commands


def _command_problems(command: str) -> list[str]:
    words = command.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]  # VARIABLE=value prefixes
    problems = [problem for word in words if PATH_TOKEN.fullmatch(word) and (problem := _path_problem(word))]
    if not words or problems:
        return problems
    program, args = words[0], words[1:]
    if program in {"python", "python3"} and args[:1] == ["-m"]:
        module = args[1]
        if importlib.util.find_spec(module) is None:
            problems.append(f"{command}: no module {module} in this environment")
    elif program in {"python", "python3", "bash", "torchrun"}:
        scripts = [arg for arg in args if arg.endswith((".py", ".sh")) and (ROOT / arg).is_file()]
        if not scripts:
            return [f"{command}: names no script of this repository"]
        script = scripts[0]
        source = (ROOT / script).read_text()
        following = args[args.index(script) + 1 :]
        if script == "scripts/quickstart.sh":
            jobs = re.search(r"usage: bash scripts/quickstart.sh \{([\w|]+)\}", source).group(1).split("|")
            if not following or following[0] not in jobs:
                problems.append(f"{command}: quickstart.sh's jobs are {jobs}")
        elif script != "setup.py":  # setup.py's commands and options are setuptools'
            for option in (arg.split("=")[0] for arg in following if arg.startswith("--")):
                if f'"{option}"' not in source and f"'{option}'" not in source:
                    problems.append(f"{command}: {script} has no option {option}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_relative_links_resolve(doc):
    prose, _ = _split_code(doc.read_text())
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not problems, problems


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_paths_exist(doc):
    prose, blocks = _split_code(doc.read_text())
    tokens = [code for code in _inline_code(prose) if PATH_TOKEN.fullmatch(code)]
    for language, body in blocks:
        if not language:  # a layout listing: the first word of each line
            tokens += [line.split()[0] for line in body.splitlines() if line.strip() and "/" in line.split()[0]]
    problems = [problem for token in tokens if (problem := _path_problem(token))]
    assert not problems, problems


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_commands_exist(doc):
    problems = [problem for command in _commands(doc) for problem in _command_problems(command)]
    assert not problems, problems


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_version_and_platform_are_the_packages(doc):
    text = doc.read_text()
    versions = set(re.findall(r"gelu_ext-(\d+\.\d+\.\d+)", text))
    assert versions <= {gelu_ext.__version__}, f"names gelu_ext {versions}, the package is {gelu_ext.__version__}"
    platforms = set(re.findall(r"manylinux_\d+_\d+", text))
    assert platforms <= {"manylinux_2_28"}, f"names {platforms}: the wheel is manylinux_2_28"


def _marked_tables(text: str, marker: str) -> list[list[dict[str, str]]]:
    """The tables right after `<!-- marker ... -->`, as rows of {header: cell}."""
    tables = []
    for match in re.finditer(rf"^<!-- {marker}\b.*-->\n((?:\|.*\|\n?)+)", text, flags=re.M):
        lines = match.group(1).strip().splitlines()
        header = [cell.strip().lower() for cell in lines[0].strip("|").split("|")]
        rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
        tables.append(rows)
    return tables


def _figure(cell: str) -> tuple[float, int]:
    """A table cell's number and how many decimals it shows."""
    number = re.search(r"\d+\.(\d+)", cell.replace("*", ""))
    return float(number.group(0)), len(number.group(1))


def _mode(cell: str) -> str:
    return "tanh" if "tanh" in cell else "none"


def _check_rounded(cell: str, measured: float, where: str) -> None:
    value, decimals = _figure(cell)
    assert value == round(measured, decimals), f"{where}: the docs say {cell}, the tests guard {measured}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_guarded_figures_match_the_tests(doc):
    text = doc.read_text()
    for table in _marked_tables(text, "MEASURED_MAX_ULP"):
        assert {_mode(row["approximate"]) for row in table} == set(MEASURED_MAX_ULP), table
        for row in table:
            figures = MEASURED_MAX_ULP[_mode(row["approximate"])]
            for column, cell in row.items():
                for kind in ("forward", "derivative"):
                    if column.startswith(kind):
                        _check_rounded(cell, figures[kind], f"{doc.name} {row['approximate']} {kind}")
    for table in _marked_tables(text, "GEGLU_MEASURED_MAX_ULP"):
        assert {_mode(row["approximate"]) for row in table} == set(GEGLU_MEASURED_MAX_ULP), table
        for row in table:
            cell = next(cell for column, cell in row.items() if column.startswith("forward"))
            _check_rounded(cell, GEGLU_MEASURED_MAX_ULP[_mode(row["approximate"])], f"{doc.name} geglu")

    # In prose, a figure in ulp close to a guarded one must be one of them, rounded as printed: a stale figure is
    # near its successor (4.61 for 3.837).
    guarded = [value for figures in MEASURED_MAX_ULP.values() for value in figures.values()]
    guarded += list(GEGLU_MEASURED_MAX_ULP.values())
    prose, _ = _split_code(text)
    for figure in re.findall(r"(\d+\.\d{2,3}) ulp", prose):
        value, decimals = float(figure), len(figure.split(".")[1])
        if any(abs(value - g) < 0.2 for g in guarded):
            assert any(value == round(g, decimals) for g in guarded), f"{doc.name}: {figure} ulp is no guarded figure"


def test_the_guarded_figures_are_in_the_docs():
    accuracy = (ROOT / "docs" / "accuracy.md").read_text()
    fused = (ROOT / "docs" / "fused-ops.md").read_text()
    assert _marked_tables(accuracy, "MEASURED_MAX_ULP") and _marked_tables(fused, "GEGLU_MEASURED_MAX_ULP")


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_repeated_rows_are_the_sources(doc):
    # A table marked `<!-- rows from docs/X.md -->` repeats rows of that page's tables, exactly (one figure, one
    # source: re-measuring updates the page and the check then names the stale copy).
    text = doc.read_text()
    for source, table in re.findall(r"^<!-- rows from (\S+) -->\n((?:\|.*\|\n?)+)", text, flags=re.M):
        source_lines = set((doc.parent / source).read_text().splitlines())
        rows = table.strip().splitlines()[2:]
        missing = [row for row in rows if row not in source_lines]
        assert rows and not missing, f"{doc.name}: rows not in {source}: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_python_examples_run(doc, tmp_path, monkeypatch):
    # The examples as a reader copies them, in one namespace per page (torch.compile makes this a slow test).
    _, blocks = _split_code(doc.read_text())
    code = "\n".join(body for language, body in blocks if language == "python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(doc), "exec"), {"__name__": "__docs__"})
