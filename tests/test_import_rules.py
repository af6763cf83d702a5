"""The import rules of the layout (README, Layout): no circle among the project's modules, serve and the batch
jobs independent (the CLI may dispatch to both), no Ray in models/ or pipelines/. Read from the code's imports."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("models", "pipelines", "ray_jobs", "serve")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (function-level and TYPE_CHECKING imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    edges, raw = {}, {}
    for name, path in modules.items():
        raw[name] = _imports(name, path)
        targets = set()
        for target in raw[name]:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                targets.add(target)
        edges[name] = targets
    return edges, raw


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    edges, _ = _graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_serve_and_batch_jobs_are_independent_and_models_pipelines_have_no_ray():
    edges, raw = _graph()
    for name, targets in edges.items():
        top = name.split(".")[0]
        if top == "serve":
            assert not any(t.startswith("ray_jobs") for t in targets), name
        if top == "ray_jobs" and name != "ray_jobs.cli":
            assert not any(t.startswith("serve") for t in targets), name
        if top in ("models", "pipelines"):
            assert not any(t == "ray" or t.startswith("ray.") for t in raw[name]), name


def test_the_checks_see_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
