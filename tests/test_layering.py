"""The import graph keeps its shape: no cycles, and every import points down the layers.

DESIGN §1: `starters → workflows → activities`, `workers → workflows, activities`, nothing imports
`starters` or `workers`, and the plan's shared types (`skyshift.spec`) stand below everything. A cycle
between two capabilities (a module, or a package like `activities.shadow`) makes each the other's
hidden dependency: the next change to one breaks the other at import time. Imports inside functions
count too: deferring an import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("skyshift", "activities", "workflows", "workers", "starters")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: Iterable[str]) -> set[str]:
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def unit(name: str) -> str:
    """The capability a module belongs to: `activities.shadow.runner` → `activities.shadow`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("activities", "skyshift") else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back():
    assert cycles(GRAPH) == []


def test_no_two_capabilities_import_each_other():
    units: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        units.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))
    assert cycles(units) == []


def test_imports_point_down_the_layers():
    may_import = {
        "skyshift.spec": {"skyshift.spec"},
        "activities": {"activities", "skyshift"},
        "workflows": {"workflows", "activities", "skyshift"},
        "workers": {"workers", "workflows", "activities", "skyshift"},
        "starters": {"starters", "workflows", "activities", "skyshift"},
    }
    wrong = []
    for name, targets in GRAPH.items():
        layer = "skyshift.spec" if name.startswith("skyshift.spec") else name.split(".")[0]
        allowed = may_import.get(layer)
        if allowed is None:  # the rest of skyshift/: shared by starters and workers, below workflows
            allowed = {"skyshift", "activities"}
        for target in targets:
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_the_graph_is_read():
    """The checks above mean something only if the imports were found."""
    assert "activities.metrics" in GRAPH["workflows.plan"] or "skyshift.spec.endpoints" in GRAPH["workflows.plan"]
    assert "workflows.phases.context" in GRAPH["workflows.migration"]
