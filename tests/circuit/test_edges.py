"""Edges: they decompose each upstream node's effect, and edge_threshold prunes them."""
import pytest
import torch
from circuits_testlib import SAFE, TOXIC

from refusal.circuit.attribution import attribute, node_space
from refusal.circuit.edges import compute_edges
from refusal.circuit.patch import PatchSource
from refusal.circuit.select import Selection, select_edges


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_edges_out_of_a_node_sum_to_its_atp_effect(cm, aggregation):
    """With every downstream node included, Σ_d edge(u → d) = IE_atp(u) (the paths of u all pass the next hook)."""
    src = PatchSource("mean_safe", cm, SAFE)
    space = node_space(cm, aggregation)
    ie = attribute(cm, TOXIC, src, "atp", aggregation).ie.mean(0).double()
    edges = compute_edges(cm, TOXIC, src, space, torch.ones(space.n_nodes, dtype=torch.bool))
    out = torch.zeros(space.n_nodes, dtype=torch.float64)
    for (u, d), w in edges.items():
        assert space.hook_index[u] == 0 and space.hook_index[d] == 1
        out[u] += w
    first = space.hook_slice(0)
    assert ie[first].abs().max() > 1e-4
    torch.testing.assert_close(out[first], ie[first], atol=1e-6, rtol=1e-4)


def test_edges_only_between_selected_nodes_and_threshold_prunes(cm):
    src = PatchSource("mean_safe", cm, SAFE)
    space = node_space(cm, "sum")
    ie = attribute(cm, TOXIC, src, "atp", "sum").ie.mean(0)
    selected = torch.zeros(space.n_nodes, dtype=torch.bool)
    for h in range(2):
        idx = torch.arange(space.n_nodes)[space.hook_slice(h)]
        selected[idx[ie[space.hook_slice(h)].abs().argsort(descending=True)[:6]]] = True
    edges = compute_edges(cm, TOXIC, src, space, selected)
    assert len(edges) == 36
    assert all(selected[u] and selected[d] for u, d in edges)
    weights = sorted(abs(w) for w in edges.values())
    mid = weights[len(weights) // 2]
    none = select_edges(edges, Selection(top_n_per_layer=6, edge_threshold=0.0, threshold_mode="absolute"), 1.0)
    pruned = select_edges(edges, Selection(top_n_per_layer=6, edge_threshold=mid, threshold_mode="absolute"), 1.0)
    relative = select_edges(edges, Selection(top_n_per_layer=6, edge_threshold=mid, threshold_mode="relative"), 10.0)
    assert len(none) == 36 > len(pruned) > 0
    assert all(abs(w) >= mid for w in pruned.values())
    assert len(relative) < len(pruned)  # relative: threshold × |effect| = 10 × mid


def test_per_node_backward_path_gives_the_same_edges(cm, monkeypatch):
    """Where vmapped backward is unavailable the edges come from one backward per downstream node, unchanged."""
    src = PatchSource("zero", cm, SAFE)
    space = node_space(cm, "sum")
    selected = torch.zeros(space.n_nodes, dtype=torch.bool)
    selected[[0, 1, 2, space.offsets[1], space.offsets[1] + 3, space.offsets[2] - 1]] = True
    batched = compute_edges(cm, TOXIC, src, space, selected)
    real_grad = torch.autograd.grad

    def no_batching(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented")
        return real_grad(*args, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    looped = compute_edges(cm, TOXIC, src, space, selected)
    assert batched.keys() == looped.keys() and len(batched) == 9
    for k in batched:
        assert looped[k] == pytest.approx(batched[k], rel=1e-5, abs=1e-9)
