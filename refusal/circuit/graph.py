"""One graph over the toxic category circuits (``graph.json`` in a discover run dir), in a schema close to the
attribution-graph JSON of circuit-tracer / Neuronpedia (top-level ``metadata``, ``nodes``, ``links``), extended
with which category circuits hold each node and link. Drawn by :mod:`refusal.circuit.graph_view`.

Schema (``metadata.schema`` = ``"refusal-circuits/graph"``, ``metadata.schema_version`` = 1)::

    {"metadata": {"schema", "schema_version", "model", "kind": "toxic", "categories": [sorted category names],
                  "layers": [sorted], "positions": [sorted, ints; [] when positions are aggregated],
                  "n_nodes", "n_links", "n_shared", "max_abs_attribution", "max_abs_weight"},
     "nodes": [{"node_id": "<hook>/<feature>[@<position>]"  (the circuit files' node id),
                "hook", "layer", "feature": int | "error", "ctx_idx": position from the end (-1 = last token)
                or null when aggregated over positions, "feature_type": "sae feature" | "sae error",
                "categories": [categories whose circuit holds the node], "attribution": {category: mean IE},
                "max_abs_attribution", "shared": bool, "dashboard": the id of the node's dashboard card in the report,
                "dash-<hook>-<feature>" sanitised (refusal.circuit.dashboards.node_key), null for error nodes}],
     "links": [{"source", "target", "weight", "category", "shared": the edge is in every category's circuit}]}

The circuits' metric is one more node, ``node_id`` ``"metric"`` (``feature_type`` ``"logit"`` as circuit-tracer's
output nodes, ``layer`` one above the deepest circuit layer, ``feature`` the metric's name, e.g. refusal_score),
and every node of a category's circuit links to it with ``weight`` = the node's attribution in that category (its
total indirect effect on the metric, not only the direct path), so a circuit read at one hook still shows which
features carry the metric in which categories.

``shared`` is the discovery summary's shared core (:func:`refusal.circuit.compare.shared_core`): a feature node in
every toxic category's circuit; error nodes are never shared. The pooled circuit (category ``all``) and the safe
circuits are left out. A link is one edge of one category's circuit, so an edge several circuits hold appears once
per category. Deterministic: nodes in model order (layer, hook, features before the error node, position), links
by (source, target, category), floats rounded to ``SIG_DIGITS`` significant digits, keys sorted when written.
"""
from __future__ import annotations

from pathlib import Path

import torch

from refusal.circuit.circuit import COMBINED, rnd
from refusal.circuit.compare import shared_core
from refusal.circuit.dashboards import node_key
from refusal.circuit.nodes import ERROR
from refusal.utils.io import read_json, write_json

SCHEMA = "refusal-circuits/graph"
SCHEMA_VERSION = 1
GRAPH_FILE = "graph.json"
GRAPH_PAGE = "graph.html"
METRIC = "metric"  # node_id of the circuits' metric (the graph's output node)


def dashboard_anchor(hook: str, feature) -> str:
    """The HTML id of a feature's dashboard card in the report, ``dash-<node key>`` (the same as
    ``refusal.evaluation.dashboard_section.dashboard_anchor``, which refusal.circuit cannot import)."""
    return f"dash-{node_key(hook, feature)}"


def _node_order(n: dict) -> tuple:
    err = n["feature"] == ERROR
    return (n["layer"], n["hook"], err, -1 if err else int(n["feature"]),
            n["position"] if n["position"] is not None else 0)


def category_circuits(circuits: list[dict]) -> dict[str, dict]:
    """The toxic per-category circuits (not the pooled one) by category."""
    out = {}
    for c in circuits:
        if c.get("kind") == "toxic" and c.get("category") != COMBINED:
            if c["category"] in out:
                raise ValueError(f"two toxic circuits for category {c['category']!r}")
            out[c["category"]] = c
    return dict(sorted(out.items()))


def _shared(nodes: dict[str, dict], holders: dict[str, set], cats: list[str]) -> set[str]:
    """Feature node ids in every category's circuit, by the summary's shared-core rule."""
    feats = [i for i in nodes if nodes[i]["feature"] != ERROR]
    if not feats or not cats:
        return set()
    masks = torch.tensor([[c in holders[i] for i in feats] for c in cats], dtype=torch.bool)
    ie = torch.tensor([[nodes[i]["attribution"].get(c) or 0.0 for i in feats] for c in cats], dtype=torch.float64)
    core = shared_core(ie, masks)["core"]
    return {i for i, k in zip(feats, core.tolist()) if k}


def _max_abs(values) -> float:
    vals = [abs(v) for v in values if v is not None]
    return rnd(max(vals)) if vals else 0.0


def graph_json(circuits: list[dict]) -> dict:
    """The graph (schema above) over the toxic category circuits among ``circuits`` (circuit-file dicts)."""
    by_cat = category_circuits(circuits)
    cats = list(by_cat)
    nodes: dict[str, dict] = {}
    holders: dict[str, set] = {}
    links = []
    for cat, c in by_cat.items():
        for n in c.get("nodes", []):
            node = nodes.setdefault(n["id"], {
                "node_id": n["id"], "hook": n["hook"], "layer": int(n["layer"]), "feature": n["feature"],
                "position": n.get("position"), "attribution": {}})
            node["attribution"][cat] = rnd(n.get("attribution"))
            holders.setdefault(n["id"], set()).add(cat)
        links += [{"source": e["source"], "target": e["target"], "weight": rnd(e.get("weight")), "category": cat}
                  for e in c.get("edges", [])]
    shared = _shared(nodes, holders, cats)
    metric_name = next((c.get("metric", {}).get("name") for c in by_cat.values()), None) or "metric"
    links += [{"source": i, "target": METRIC, "weight": a, "category": cat}
              for i, n in nodes.items() for cat, a in n["attribution"].items()]
    out_nodes = []
    for n in sorted(nodes.values(), key=_node_order):
        err = n["feature"] == ERROR
        out_nodes.append({
            "node_id": n["node_id"], "hook": n["hook"], "layer": n["layer"], "feature": n["feature"],
            "ctx_idx": n["position"], "feature_type": "sae error" if err else "sae feature",
            "categories": sorted(holders[n["node_id"]]), "attribution": dict(sorted(n["attribution"].items())),
            "max_abs_attribution": _max_abs(n["attribution"].values()), "shared": n["node_id"] in shared,
            "dashboard": None if err else dashboard_anchor(n["hook"], n["feature"])})
    if out_nodes:
        out_nodes.append({"node_id": METRIC, "hook": None, "layer": max(n["layer"] for n in out_nodes) + 1,
                          "feature": metric_name, "ctx_idx": None, "feature_type": "logit", "categories": cats,
                          "attribution": {}, "max_abs_attribution": 0.0, "shared": False, "dashboard": None})
    ids = {n["node_id"] for n in out_nodes}
    links = sorted((x for x in links if x["source"] in ids and x["target"] in ids),
                   key=lambda x: (x["source"], x["target"], x["category"]))
    held: dict[tuple, int] = {}
    for x in links:
        held[(x["source"], x["target"])] = held.get((x["source"], x["target"]), 0) + 1
    for x in links:
        x["shared"] = bool(cats) and held[(x["source"], x["target"])] == len(cats)
    model = next((c.get("manifest", {}).get("model") for c in by_cat.values()), None)
    meta = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": model, "kind": "toxic", "categories": cats,
            "layers": sorted({n["layer"] for n in out_nodes if n["node_id"] != METRIC}),
            "positions": sorted({n["ctx_idx"] for n in out_nodes if n["ctx_idx"] is not None}),
            "n_nodes": len(out_nodes) - (METRIC in ids), "n_links": len(links), "n_shared": len(shared),
            "max_abs_attribution": _max_abs(n["max_abs_attribution"] for n in out_nodes),
            "max_abs_weight": _max_abs(x["weight"] for x in links)}
    return {"metadata": meta, "nodes": out_nodes, "links": links}


def read_circuits(circuits_dir: str | Path) -> list[dict]:
    """Every circuit file in a discover run's ``circuits/`` dir, in file-name order."""
    return [read_json(p) for p in sorted(Path(circuits_dir).glob("*_circuit.json"))]


def write_graph(run_dir: str | Path, circuits: list[dict]) -> tuple[Path, Path]:
    """Write ``graph.json`` and the standalone page ``graph.html`` into the discover ``run_dir`` (atomically);
    returns both paths."""
    from refusal.circuit.graph_view import write_page

    run_dir = Path(run_dir)
    graph = graph_json(circuits)
    write_json(run_dir / GRAPH_FILE, graph)
    return run_dir / GRAPH_FILE, write_page(run_dir / GRAPH_PAGE, graph)
