"""discover writes graph.json and graph.html next to its circuits (in-process, on the fake train dir of
test_discover_task): the graph is the one built from the run's toxic category circuits, byte-identical across
runs, and its shared nodes are the discovery summary's shared core."""
from __future__ import annotations

import json

from test_discover_task import _run, fake_train_dir

from refusal.circuit.graph import graph_json, read_circuits
from refusal.runs import DiscoverRun


def test_discover_writes_the_graph(tmp_path):
    train = fake_train_dir(tmp_path / "train")
    args = ("circuit.separate_safe_toxic=false", "circuit.statistics.n_resamples=0")
    summary = _run(train, tmp_path / "a", *args)
    run = DiscoverRun(tmp_path / "a")
    graph = json.loads(run.graph.read_text())
    assert graph == graph_json(read_circuits(run.circuits))
    assert graph["metadata"]["categories"] == summary["categories"]
    assert sorted(n["node_id"] for n in graph["nodes"] if n["shared"]) == sorted(summary["shared_core"]["nodes"])
    page = run.graph_page.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    _run(train, tmp_path / "b", *args)
    assert run.graph.read_bytes() == DiscoverRun(tmp_path / "b").graph.read_bytes()
    assert run.graph_page.read_bytes() == DiscoverRun(tmp_path / "b").graph_page.read_bytes()
