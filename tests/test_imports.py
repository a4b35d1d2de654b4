"""livepush's modules import each other one way: no cycle, not even under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "livepush"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every livepush module `path` imports anywhere in it (functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules and name != "livepush"}


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """One import path from `start` back to itself, if there is one."""
    paths = [[start, name] for name in sorted(graph[start])]
    seen: set[str] = set()
    while paths:
        path = paths.pop()
        if path[-1] == start:
            return path
        if path[-1] not in seen:
            seen.add(path[-1])
            paths.extend([*path, name] for name in sorted(graph[path[-1]]))
    return None


def test_no_livepush_module_imports_itself_through_others() -> None:
    modules = _module_names()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles = [cycle for name in sorted(graph) if (cycle := _cycle_through(name, graph))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
