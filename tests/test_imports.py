"""The import graph of refusal/ has no cycle, between packages (refusal.X -> refusal.Y) or between modules.

Every import counts, at the top of a module or inside a function: a function-level import that closes a cycle is
still a cycle, only deferred. Modules are parsed (ast), never imported."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "refusal"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The refusal modules ``path`` imports anywhere in its body (``from a import b`` counts ``a.b`` when that is
    a module, else ``a``)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # a name inside a module: the module itself
                name = name.rpartition(".")[0]
            if name.startswith("refusal") and name != here:
                out.add(name)
    return out


def module_graph() -> nx.DiGraph:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for p in paths:
        graph.add_edges_from((module_name(p), m) for m in imported(p, modules))
    return graph


def package_of(module: str) -> str:
    """refusal.X for a module under refusal/X/, else the module itself (refusal.config, refusal.errors ...)."""
    parts = module.split(".")
    is_package = (ROOT.parent.joinpath(*parts[:2]) / "__init__.py").is_file() if len(parts) >= 2 else False
    return ".".join(parts[:2]) if is_package else module


def package_graph(modules: nx.DiGraph) -> nx.DiGraph:
    graph = nx.DiGraph()
    for a, b in modules.edges:
        if package_of(a) != package_of(b):
            graph.add_edge(package_of(a), package_of(b))
    return graph


def cycle_text(graph: nx.DiGraph) -> str | None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    return " -> ".join([a for a, _ in cycle] + [cycle[0][0]])


def test_the_parser_sees_top_level_and_function_level_imports():
    graph = module_graph()
    assert graph.has_edge("refusal.model.hooks", "refusal.errors")  # top level, `from refusal.errors import ...`
    assert len(graph) > 50 and graph.number_of_edges() > 100


def test_a_cycle_is_found_and_printed():
    graph = nx.DiGraph([("refusal.a", "refusal.b"), ("refusal.b", "refusal.c"), ("refusal.c", "refusal.a")])
    assert cycle_text(graph) in ("refusal.a -> refusal.b -> refusal.c -> refusal.a",
                                 "refusal.b -> refusal.c -> refusal.a -> refusal.b",
                                 "refusal.c -> refusal.a -> refusal.b -> refusal.c")


@pytest.mark.parametrize("level", ["package", "module"])
def test_no_import_cycle(level):
    modules = module_graph()
    graph = package_graph(modules) if level == "package" else modules
    cycle = cycle_text(graph)
    assert cycle is None, f"{level} import cycle: {cycle}"
