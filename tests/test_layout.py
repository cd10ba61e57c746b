"""The shape of the code, read with `ast`: stages import only the stages before them, no class is
built inside a function, no module outgrows one reader.

Imports inside functions count: they run too, later, and a circle through them is still a circle
(checkpoint -> export -> evaluate -> checkpoint was one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "cnnlab"
MAX_LINES = 700
MAX_LINES_OF = {"train.py": 600}  # orchestration and scoring only: what a run does, in order


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The cnnlab modules `path` imports anywhere in it (`from cnnlab import rundir` is cnnlab.rundir)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules)
    return found - {_module_name(path)}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a path around it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_circle_among_cnnlab_modules():
    found = circles(import_graph())
    assert not found, "import circles (imports inside functions included): " + "; ".join(
        " <-> ".join(group) for group in found)


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_stages_come_in_order():
    """A few facts of the layout (README, "Code layout"), as the graph shows them."""
    graph = import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    for low in ("cnnlab.backend", "cnnlab.litert", "cnnlab.rundir", "cnnlab.errors", "cnnlab.loop", "cnnlab.track"):
        for stage in ("cnnlab.config", "cnnlab.model", "cnnlab.checkpoint", "cnnlab.train", "cnnlab.export"):
            assert not reaches(low, stage), f"{low} (the ground floor) imports the stage {stage}"
    assert not reaches("cnnlab.checkpoint", "cnnlab.train") and not reaches("cnnlab.checkpoint", "cnnlab.export")
    assert not reaches("cnnlab.predict", "cnnlab.train") and not reaches("cnnlab.serve", "cnnlab.train")
    assert reaches("cnnlab.tape", "cnnlab.loop") and reaches("cnnlab.distribute", "cnnlab.loop")


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_class_is_defined_inside_a_function(name):
    path = _modules()[name]
    inner = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner += [f"{child.name} (line {child.lineno}, in {node.name})" for child in ast.walk(node)
                      if isinstance(child, ast.ClassDef)]
    assert not inner, f"{path.relative_to(REPO)}: classes built inside functions: {', '.join(inner)}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_too_long_to_read(name):
    path = _modules()[name]
    limit = MAX_LINES_OF.get(path.name, MAX_LINES)
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.relative_to(REPO)}: {lines} lines (at most {limit}); split it by concern"
