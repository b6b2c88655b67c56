"""The report's interactive circuit-graph section: the discover run's ``graph.json`` (or, for a run written before
the graph existed, the graph built from its ``circuits/`` files) drawn by :func:`refusal.circuit.graph_view.graph_html`.
No discover dir, no graph and no circuits, or an unreadable graph: the section is marked missing with the reason,
never a crash."""
from __future__ import annotations

import json
from pathlib import Path

from refusal.circuit.graph import GRAPH_FILE, GRAPH_PAGE, SCHEMA, graph_json, read_circuits
from refusal.circuit.graph_view import graph_html
from refusal.evaluation.report import Html, Section, Text

KEY, TITLE = "circuit_graph", "Circuit graph"


def load_graph(discover_dir: str | Path) -> tuple[dict | None, str | None]:
    """(graph, None) from a discover run dir, or (None, why there is none)."""
    d = Path(discover_dir)
    path = d / GRAPH_FILE
    if path.is_file():
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return None, f"{path} is unreadable ({e})"
        return graph, None
    try:
        circuits = read_circuits(d / "circuits")
    except (OSError, ValueError) as e:
        return None, f"no {GRAPH_FILE} in {d} and its circuit files are unreadable ({e})"
    if not any(c.get("kind") == "toxic" for c in circuits):
        return None, f"no {GRAPH_FILE} and no toxic circuit files in {d}"
    return graph_json(circuits), None


def _check(graph) -> str | None:
    if not isinstance(graph, dict) or (graph.get("metadata") or {}).get("schema") != SCHEMA:
        return f"not a {SCHEMA} graph"
    if not graph.get("nodes"):
        return "the toxic category circuits have no nodes"
    return None


def graph_section(source, dashboard_href: str | None = "", uid: str | None = None) -> Section:
    """The section for ``source``: a discover run dir (str/Path), a graph dict, or None (missing).
    ``dashboard_href``: where the feature dashboard cards are (``""``: the same page; None: no links)."""
    if source is None or source == "":
        return Section(KEY, TITLE, missing="no discover run dir given")
    where = ""
    if isinstance(source, dict):
        graph = source
    else:
        graph, why = load_graph(source)
        if graph is None:
            return Section(KEY, TITLE, missing=why)
        where = f" (standalone page: {Path(source) / GRAPH_PAGE})" if (Path(source) / GRAPH_PAGE).is_file() else ""
    why = _check(graph)
    if why:
        return Section(KEY, TITLE, missing=why)
    meta = graph["metadata"]
    note = (f"Interactive graph of the toxic category circuits: {meta.get('n_nodes')} nodes, {meta.get('n_shared')} "
            f"shared by every category, {meta.get('n_links')} links. y: layer, x: token position; hover a node for "
            "its attributions; filter by category and by link |weight|.")
    return Section(KEY, TITLE, [Text(note), Html(graph_html(graph, dashboard_href, uid),
                                            f"Interactive circuit graph: open report.html{where}.")])
