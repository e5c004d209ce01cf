"""Dependencies point one way, with no cycles, and build or benchmark code stays out of the runtime packages.

    jobs -> pipeline -> operators -> common

Read from the source (every import, including those inside functions), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

RUNTIME = ("common", "operators", "pipeline", "jobs")
BUILD_TIME = ("builders", "benchmarks")
# What each top-level package may import of ours (besides itself).
ALLOWED = {
    "common": set(),
    "operators": {"common"},
    "pipeline": {"common", "operators"},
    "jobs": {"common", "operators", "pipeline"},
    "builders": {"common", "operators", "pipeline"},
    "benchmarks": {"common", "operators", "pipeline", "jobs", "builders"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in (*RUNTIME, *BUILD_TIME)
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _imports(path: Path, known: set[str]) -> set[str]:
    """Our modules that ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def test_packages_import_only_what_lies_below_them() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        package = name.split(".")[0]
        for imported in _imports(path, set(modules)):
            target = imported.split(".")[0]
            if target != package and target not in ALLOWED[package]:
                wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own modules (a registry filling itself) is not a cycle of concepts.
    for name in graph:
        graph[name] = {
            m for m in graph[name] if not (name in graph and m.startswith(name + ".") and path_is_init(modules[name]))
        }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def path_is_init(path: Path) -> bool:
    return path.name == "__init__.py"


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_packages_are_what_pip_installs(package: str) -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert f"{package}*" in included
    assert not any(f"{b}*" in included for b in BUILD_TIME)


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in [*_modules().values(), *sorted((REPO / "tests").glob("*.py"))]
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}


# Inside pipeline: the concepts a newcomer reads in this order, each importing only those before it (the
# top-level graph, options and output sit beside models: ``models.add`` and ``quantize`` run the graph).
PIPELINE_ROOMS = {
    "pipeline.models": set(),
    "pipeline.runs": {"pipeline.models"},
    "pipeline.nightly": {"pipeline.models", "pipeline.runs"},
    "pipeline.serving": {"pipeline.models"},
}


def test_pipeline_rooms_import_only_the_rooms_before_them() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        room = next((r for r in PIPELINE_ROOMS if name == r or name.startswith(r + ".")), None)
        if room is None:
            continue
        for imported in _imports(path, set(modules)):
            other = next((r for r in PIPELINE_ROOMS if imported == r or imported.startswith(r + ".")), None)
            if other is not None and other != room and other not in PIPELINE_ROOMS[room]:
                wrong.append(f"{name} imports {imported}")
    assert wrong == []
