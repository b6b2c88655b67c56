"""The circuit graph (graph.json) and its HTML fragment: schema fields, the shared flag (the summary's shared
core), per-category links, the filter data in the page, ``</script>`` in the data kept inside its block, unique
ids per graph, and byte-identical output whatever the input order."""
from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser

from graph_testlib import H1, H2, circuit, circuits, node

from refusal.circuit.compare import shared_core
from refusal.circuit.graph import GRAPH_FILE, GRAPH_PAGE, METRIC, SCHEMA, dashboard_anchor, graph_json, write_graph
from refusal.circuit.graph_view import graph_html, graph_page, json_for_script

NODE_KEYS = {"node_id", "hook", "layer", "feature", "ctx_idx", "feature_type", "categories", "attribution",
             "max_abs_attribution", "shared", "dashboard"}


class Scripts(HTMLParser):
    """The tags, ids and script bodies of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.scripts, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "script":
            self._in = a.get("type", "text/javascript")
            self.scripts.append([self._in, ""])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.scripts[-1][1] += data


def test_schema_fields_and_what_is_left_out():
    g = graph_json(circuits())
    meta = g["metadata"]
    assert meta["schema"] == SCHEMA and meta["schema_version"] == 1 and meta["kind"] == "toxic"
    assert meta["categories"] == ["cyber", "fraud", "violence"]  # not "all", not the safe circuit
    assert meta["layers"] == [1, 2] and meta["positions"] == [] and meta["model"] == "tiny-llama"
    assert meta["n_nodes"] == len(g["nodes"]) - 1 == 5  # the metric node is not counted
    assert meta["n_links"] == len(g["links"]) == 6 + 11  # 6 edges, and 4 + 4 + 3 nodes linked to the metric
    assert meta["max_abs_weight"] == 0.9 and meta["max_abs_attribution"] == 0.9
    ids = [n["node_id"] for n in g["nodes"]]
    assert f"{H1}/99" not in ids and f"{H1}/42" not in ids
    for n in g["nodes"]:
        assert set(n) == NODE_KEYS
        assert set(n["attribution"]) == (set(n["categories"]) if n["node_id"] != METRIC else set())
    assert ids == [f"{H1}/3", f"{H1}/5", f"{H1}/error", f"{H2}/7", f"{H2}/11", METRIC]  # model order, error last
    err = next(n for n in g["nodes"] if n["feature"] == "error")
    assert err["feature_type"] == "sae error" and err["dashboard"] is None and not err["shared"]
    f3 = g["nodes"][0]
    assert f3["feature_type"] == "sae feature" and f3["ctx_idx"] is None and f3["layer"] == 1
    assert f3["attribution"] == {"cyber": 0.9, "fraud": 0.5, "violence": 0.7}
    assert f3["dashboard"] == dashboard_anchor(H1, 3) == "dash-blocks-1-hook_resid_post-3"
    five = next(n for n in g["nodes"] if n["node_id"] == f"{H1}/5")
    assert five["attribution"]["fraud"] == 0.12345679  # rounded to 8 significant digits
    for link in g["links"]:
        assert set(link) == {"source", "target", "weight", "category", "shared"}


def test_shared_flag_is_the_summary_shared_core():
    g = graph_json(circuits())
    shared = {n["node_id"] for n in g["nodes"] if n["shared"]}
    assert shared == {f"{H1}/3", f"{H2}/7"} and g["metadata"]["n_shared"] == 2
    # same answer as compare.shared_core on the category masks (the discovery summary's rule)
    import torch
    feats = [n["node_id"] for n in g["nodes"] if n["feature_type"] == "sae feature"]
    cats = g["metadata"]["categories"]
    masks = torch.tensor([[c in n["categories"] for n in g["nodes"] if n["feature_type"] == "sae feature"]
                          for c in cats])
    core = shared_core(torch.ones(masks.shape, dtype=torch.float64), masks)["core"]
    assert shared == {i for i, k in zip(feats, core.tolist()) if k}
    # an error node in every circuit is still not shared
    cs = [circuit(c, [node(H1, "error", 1.0), node(H1, 1, 1.0)], []) for c in ("a", "b")]
    flags = {n["node_id"]: n["shared"] for n in graph_json(cs)["nodes"]}
    assert flags == {f"{H1}/1": True, f"{H1}/error": False, METRIC: False}


def test_links_per_category_and_shared_links():
    g = graph_json(circuits())
    edge = [x for x in g["links"] if (x["source"], x["target"]) == (f"{H1}/3", f"{H2}/7")]
    assert [(x["category"], x["weight"], x["shared"]) for x in edge] == [
        ("cyber", 0.5, True), ("fraud", 0.5, True), ("violence", 0.9, True)]
    others = [x for x in g["links"] if x not in edge and x["target"] != METRIC]
    assert others and not any(x["shared"] for x in others)
    assert {x["category"] for x in others} == {"cyber", "fraud"}


def test_every_node_links_to_the_metric_with_its_attribution_per_category():
    g = graph_json(circuits())
    metric = g["nodes"][-1]
    assert metric["node_id"] == METRIC and metric["feature_type"] == "logit" and metric["layer"] == 3
    assert metric["categories"] == ["cyber", "fraud", "violence"] and metric["dashboard"] is None
    into = {(x["source"], x["category"]): (x["weight"], x["shared"]) for x in g["links"] if x["target"] == METRIC}
    expected = {(n["node_id"], c): a for n in g["nodes"][:-1] for c, a in n["attribution"].items()}
    assert {k: w for k, (w, _) in into.items()} == expected and len(into) == 11
    assert into[(f"{H1}/3", "fraud")] == (0.5, True)  # a shared node's links to the metric are shared
    assert into[(f"{H2}/11", "cyber")] == (-0.2, False)


def test_per_position_nodes_keep_their_position():
    cs = [circuit(c, [node(H1, 2, 0.5, position=-1), node(H1, 2, 0.2, position=-3)], []) for c in ("a", "b")]
    g = graph_json(cs)
    assert [n["ctx_idx"] for n in g["nodes"]] == [-3, -1, None] and g["metadata"]["positions"] == [-3, -1]
    assert [n["node_id"] for n in g["nodes"]] == [f"{H1}/2@-3", f"{H1}/2@-1", METRIC]


def test_deterministic_whatever_the_input_order(tmp_path):
    cs = circuits()
    shuffled = json.loads(json.dumps(cs))
    random.Random(0).shuffle(shuffled)
    for c in shuffled:
        random.Random(1).shuffle(c["nodes"])
        random.Random(2).shuffle(c["edges"])
    a, b = graph_json(cs), graph_json(shuffled)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert graph_html(a) == graph_html(b) and graph_page(a) == graph_page(b)
    p1 = write_graph(tmp_path / "one", cs)
    p2 = write_graph(tmp_path / "two", shuffled)
    assert [p.name for p in p1] == [GRAPH_FILE, GRAPH_PAGE]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(p1, p2))
    assert json.loads(p1[0].read_text()) == a


def test_fragment_holds_the_filter_data():
    g = graph_json(circuits())
    frag = graph_html(g, dashboard_href="")
    parser = Scripts()
    parser.feed(frag)
    assert "svg" in parser.tags and "select" in parser.tags and "input" in parser.tags
    options = re.findall(r'<option value="([^"]*)">', frag)
    assert options == ["", "cyber", "fraud", "violence"]
    assert re.search(r'type="range" min="0" max="0.9"', frag)
    assert sorted(int(i) for i in re.findall(r'data-node="(\d+)"', frag)) == list(range(len(g["nodes"])))
    assert sorted(int(i) for i in re.findall(r'data-link="(\d+)"', frag)) == list(range(len(g["links"])))
    assert frag.count("<rect ") == 1 and frag.count("<circle ") == 4  # the error node is a square
    assert frag.count("<polygon ") == 1 and ">metric</text>" in frag  # the metric: a triangle on its own row
    kinds = [k for k, _ in parser.scripts]
    assert kinds == ["application/json", "text/javascript"]
    assert json.loads(parser.scripts[0][1]) == g
    assert 'data-dashboard-href=""' in frag and "data-dashboard-href=" not in graph_html(g)
    assert not re.search(r"\b(src|href)=\"(https?:)?//", frag)  # nothing fetched


def test_script_end_in_the_data_cannot_break_out():
    evil = "x</script><script>alert(1)</script><!--"
    cs = [circuit(evil, [node(H1, 1, 1.0)], []), circuit("b\u2028", [node(H1, 1, 1.0)], [])]
    g = graph_json(cs)
    frag = graph_html(g)
    parser = Scripts()
    parser.feed(frag)
    assert [k for k, _ in parser.scripts] == ["application/json", "text/javascript"]
    assert json.loads(parser.scripts[0][1]) == g
    assert frag.count("</script>") == 2 and "<!--" not in frag and "\u2028" not in parser.scripts[0][1]
    assert "&lt;/script&gt;" in frag  # the select option and legend show it as text
    assert json.loads(json_for_script({"a": "</script>&"})) == {"a": "</script>&"}


def test_two_graphs_on_one_page_do_not_clash():
    g1 = graph_json(circuits())
    g2 = graph_json(circuits()[:2])
    ids = []
    for frag in (graph_html(g1), graph_html(g2), graph_html(g1, uid="second")):
        parser = Scripts()
        parser.feed(frag)
        ids += parser.ids
    assert len(ids) == len(set(ids)) and len(ids) == 3 * 6


def test_empty_graph_still_renders():
    g = graph_json([circuit("a", [], []), circuit("b", [], [])])
    assert g["nodes"] == [] and g["links"] == [] and g["metadata"]["max_abs_weight"] == 0.0
    assert "<svg" in graph_html(g)
