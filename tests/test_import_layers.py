"""No import cycle between megaomni's folders (and its top-level modules): every layer imports
only layers below it. Read from the source (every import statement, inside functions too)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megaomni")


def _unit(module: str) -> str:
    """``megaomni.data.loader`` -> ``data``; ``megaomni.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> unit it imports -> where ("file:line")."""
    graph: dict[str, dict[str, list[str]]] = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(ROOT))
            module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
            package = module if name == "__init__.py" else module.rpartition(".")[0]
            source = _unit(module)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                targets = []
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: from the package up
                        up = package.split(".")[:len(package.split(".")) - node.level + 1]
                        base = ".".join(up + [base]).rstrip(".")
                    # ``from megaomni import data``: the names are the modules
                    targets = [f"{base}.{alias.name}" for alias in node.names] if base == "megaomni" else [base]
                for target in targets:
                    if target.startswith("megaomni.") and _unit(target) and _unit(target) != source:
                        graph.setdefault(source, {}).setdefault(_unit(target), []).append(f"{rel}:{node.lineno}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """A cycle of units (first repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(unit: str, path: list[str]) -> list[str]:
        state[unit] = 1
        for nxt in sorted(graph.get(unit, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[unit] = 2
        return []

    for unit in sorted(graph):
        if unit not in state and (found := visit(unit, [unit])):
            return found
    return []


def test_no_cycle_between_folders():
    graph = import_graph()
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} at {', '.join(graph[a][b][:3])}" for a, b in zip(cycle, cycle[1:])]
    assert not cycle, "import cycle: " + "; ".join(where)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"a": ["z"]}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ["x"]}, "b": {"c": ["y"]}}) == []


def test_the_layers_read_from_the_code():
    """The graph holds the arrows the design names: data and models stand on media, not on each other."""
    graph = import_graph()
    assert "media" in graph["data"] and "media" in graph["models"]
    assert "models" not in graph["data"] and "data" not in graph["models"]
    assert not set(graph.get("media", {})) & {"data", "models", "parallel", "pipeline", "training"}
