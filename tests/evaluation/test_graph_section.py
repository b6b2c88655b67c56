"""The report's circuit-graph section: built from a discover run's graph.json, or from its circuit files when the
run predates the graph; missing (never a crash) without a run dir, without graph and circuits, with an unreadable
graph or one of another schema; it renders into report.html and report.md."""
from __future__ import annotations

import json

from test_browser import _circuits

from refusal.circuit import graph
from refusal.circuit.graph import graph_json, write_graph
from refusal.evaluation import dashboard_section
from refusal.evaluation.graph_section import graph_section
from refusal.evaluation.report import Html, Report, Text, render_html, render_markdown
from refusal.utils.io import write_json


def test_section_from_the_discover_run_graph(tmp_path):
    write_graph(tmp_path, _circuits())
    s = graph_section(tmp_path)
    assert s.missing is None and s.key == "circuit_graph"
    text, block = s.blocks
    assert isinstance(text, Text) and "5 nodes, 2 shared" in text.text
    assert isinstance(block, Html) and "<svg" in block.html and 'data-dashboard-href=""' in block.html
    assert str(tmp_path / "graph.html") in block.markdown
    page = render_html(Report("r", [s]))
    assert '<section id="circuit_graph">' in page and page.count('<script type="application/json"') == 1
    assert "Interactive circuit graph" in render_markdown(Report("r", [s]), tmp_path)


def test_section_from_a_graph_dict_and_without_dashboard_links():
    s = graph_section(graph_json(_circuits()), dashboard_href=None, uid="g1")
    assert s.missing is None and 'id="g1"' in s.blocks[1].html and "data-dashboard-href=" not in s.blocks[1].html


def test_old_run_without_graph_json_is_built_from_its_circuits(tmp_path):
    for c in _circuits():
        write_json(tmp_path / "circuits" / f"m_{c['category']}_{c['kind']}_circuit.json", c)
    s = graph_section(tmp_path)
    assert s.missing is None and "5 nodes, 2 shared" in s.blocks[0].text and "standalone" not in s.blocks[1].markdown


def test_missing_inputs_give_a_missing_section(tmp_path):
    assert graph_section(None).missing == "no discover run dir given"
    assert "no graph.json and no toxic circuit files" in graph_section(tmp_path / "absent").missing
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "graph.json").write_text("{not json")
    assert "unreadable" in graph_section(tmp_path / "bad").missing
    assert graph_section({"nodes": []}).missing == "not a refusal-circuits/graph graph"
    empty = graph_json([{"category": "a", "kind": "toxic", "nodes": [], "edges": []}])
    assert graph_section(empty).missing == "the toxic category circuits have no nodes"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "graph.json").write_text(json.dumps([1, 2]))
    assert graph_section(tmp_path / "odd").missing == "not a refusal-circuits/graph graph"
    page = render_html(Report("r", [graph_section(None)]))
    assert "Missing:</b> no discover run dir given" in page


def test_graph_links_to_the_dashboard_cards_anchors():
    for hook, feature in (("blocks.1.hook_resid_post", 3), ("blocks.12.hook_mlp_out", 0), ("a b/c..d", "7")):
        assert graph.dashboard_anchor(hook, feature) == dashboard_section.dashboard_anchor(hook, feature)
