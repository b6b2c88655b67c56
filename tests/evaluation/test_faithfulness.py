"""Faithfulness/completeness by construction on the tiny model with random SAEs at two hooks: the full model is 1,
the empty circuit 0, completeness is the complement's faithfulness (low is good), values are never clamped,
and m(∅) is the model with every node position's activation at its mean."""
import pytest
import torch

from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.circuit.nodes import NodeSpace
from refusal.evaluation.faithfulness import AblationMetric, faithfulness_curve, ratio, score_circuit, sweep_masks
from refusal.evaluation.interventions import intervene
from refusal.evaluation.measure import last_logits
from refusal.evaluation.nodes import (NodeAblator, circuit_mask, counts_per_hook, node_index, random_matched,
                                      seeded_generator)
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations

HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
D_SAE = 24


@pytest.fixture(scope="module")
def setup(loaded, random_sae, texts):
    fmt = ChatFormatter(loaded.tokenizer)
    P = fmt.n_post_instruction
    saes = {h: random_sae(d_sae=D_SAE, seed=10 + i) for i, h in enumerate(HOOKS)}
    space = NodeSpace(HOOKS, (D_SAE, D_SAE), P, "sum")
    enc = fmt.encode(texts["safe"])
    with torch.no_grad(), capture_activations(loaded.model, list(HOOKS), stop_early=False) as cache:
        loaded.model(**enc.model_inputs(), use_cache=False)
    values, means = {}, {}
    for h, sae in saes.items():
        x = cache[h][:, -P:]
        f = sae.encode(x)
        values[h] = (f.mean(0), (x - sae.decode(f)).mean(0))
        means[h] = x.mean(0)
    ids = resolve_refusal_tokens(loaded.tokenizer)
    metric = lambda logits: refusal_score(logits, ids)  # noqa: E731
    ablator = NodeAblator(space, saes, values)
    m = AblationMetric(loaded.model, fmt, ablator, texts["toxic"], metric, batch_size=3)
    return {"space": space, "ablator": ablator, "m": m, "metric": metric, "fmt": fmt, "means": means, "P": P}


def test_full_model_is_the_unablated_model(setup, loaded, texts):
    s = setup
    full = s["m"].per_prompt(torch.ones(s["space"].n_nodes, dtype=torch.bool))
    plain = s["metric"](last_logits(loaded.model, s["fmt"], texts["toxic"], batch_size=4)).double()
    torch.testing.assert_close(full, plain, atol=1e-6, rtol=1e-6)


def test_empty_circuit_is_the_mean_activation(setup, loaded, texts):
    """∅: every node (features + error) at its mean -> the last hook's node positions hold its mean activation."""
    s = setup
    empty = s["m"].per_prompt(torch.zeros(s["space"].n_nodes, dtype=torch.bool))
    P, last = s["P"], HOOKS[-1]
    # hand computation: the last hook's node positions set to its mean activation

    class SetToMean:
        hook = last

        def edit(self, a):
            return s["means"][last].expand_as(a)
    with intervene(loaded.model, [SetToMean()], positions=P):
        expected = s["metric"](last_logits(loaded.model, s["fmt"], texts["toxic"], batch_size=4)).double()
    torch.testing.assert_close(empty, expected, atol=1e-5, rtol=1e-5)
    assert (empty - s["m"].per_prompt(torch.ones(s["space"].n_nodes, dtype=torch.bool))).abs().max() > 1e-4


def test_faithfulness_and_completeness_by_construction(setup):
    s = setup
    n = s["space"].n_nodes
    full_mask, empty_mask = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    m_full, m_empty = s["m"](full_mask), s["m"](empty_mask)
    full = score_circuit(s["m"], full_mask, m_empty, m_full)
    empty = score_circuit(s["m"], empty_mask, m_empty, m_full)
    assert full["faithfulness"] == 1.0 and full["completeness"] == 0.0
    assert empty["faithfulness"] == 0.0 and empty["completeness"] == 1.0
    # completeness of C is the faithfulness of its complement (C's own nodes ablated); low is good
    c = torch.zeros(n, dtype=torch.bool)
    c[:10] = True
    sc, comp = score_circuit(s["m"], c, m_empty, m_full), score_circuit(s["m"], ~c, m_empty, m_full)
    assert sc["completeness"] == pytest.approx(comp["faithfulness"])
    assert sc["faithfulness"] == pytest.approx(comp["completeness"])


def test_ratios_are_not_clamped():
    assert ratio(3.0, 1.0, 2.0) == 2.0
    assert ratio(0.0, 1.0, 2.0) == -1.0
    assert ratio(1.0, 1.0, 1.0) != ratio(1.0, 1.0, 1.0)  # NaN when m(M) = m(∅)


def test_curve_sweeps_thresholds_with_random_controls(setup):
    s = setup
    space = s["space"]
    ie = torch.linspace(-1, 1, space.n_nodes, dtype=torch.float64)
    curve = faithfulness_curve(s["m"], space, ie, 1.0, [0.9, 0.5, 0.5, 0.0], "absolute", 2, 0, "x",
                               discovered=ie.abs() >= 0.5)
    pts = curve["points"]
    assert [p["n_nodes"] for p in pts] == sorted(p["n_nodes"] for p in pts) and len(pts) == 3  # duplicate dropped
    assert pts[-1]["n_nodes"] == int((ie != 0).sum())
    for p in pts:
        assert p["random"]["n"] == 2 and p["random"]["faithfulness"]["mean"] is not None
    assert curve["discovered"]["n_nodes"] == int((ie.abs() >= 0.5).sum())
    at_half = next(p for p in pts if p["threshold"] == 0.5)  # the sweep selects the discovered nodes at 0.5
    assert curve["discovered"] == {k: v for k, v in at_half.items() if k != "threshold"}
    other = faithfulness_curve(s["m"], space, ie, 1.0, [0.9, 0.0], "absolute", 2, 0, "x", discovered=ie.abs() >= 0.5)
    assert other["discovered"]["n_nodes"] == at_half["n_nodes"] and other["discovered"]["random"]["n"] == 2
    again = faithfulness_curve(s["m"], space, ie, 1.0, [0.9, 0.5, 0.0], "absolute", 2, 0, "x")
    assert again["points"] == pts  # same seed, same result


def test_sweep_masks_relative_mode(setup):
    space = setup["space"]
    ie = torch.zeros(space.n_nodes, dtype=torch.float64)
    ie[[0, 1, 2]] = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    masks = dict(sweep_masks(space, ie, effect=2.0, thresholds=[0.4, 0.2, 0.01], threshold_mode="relative"))
    assert [int(m.sum()) for m in masks.values()] == [1, 2, 3]


def test_random_circuits_match_size_per_hook_and_keep_error_nodes(setup):
    space = setup["space"]
    nodes = [{"hook": HOOKS[0], "feature": 3, "position": None}, {"hook": HOOKS[0], "feature": 7, "position": None},
             {"hook": HOOKS[1], "feature": "error", "position": None}, {"hook": HOOKS[1], "feature": 0, "position": None}]
    mask = circuit_mask(space, nodes)
    assert int(mask.sum()) == 4 and bool(mask[node_index(space, HOOKS[1], "error", None)])
    draws = [random_matched(space, mask, seeded_generator(0, k)) for k in range(5)]
    for d in draws:
        assert counts_per_hook(space, d) == counts_per_hook(space, mask)
    assert len({tuple(torch.nonzero(d).flatten().tolist()) for d in draws}) > 1


def test_per_position_nodes(loaded, random_sae, texts):
    """aggregation none: a node per position; ablating one position's node changes only that position."""
    fmt = ChatFormatter(loaded.tokenizer)
    P = fmt.n_post_instruction
    hook = HOOKS[0]
    sae = random_sae(d_sae=8, seed=5)
    space = NodeSpace((hook,), (8,), P, "none")
    values = {hook: (torch.zeros(P, 8), torch.zeros(P, 64))}
    ablator = NodeAblator(space, {hook: sae}, values)
    ablate = circuit_mask(space, [{"hook": hook, "feature": "error", "position": -1}])
    enc = fmt.encode(texts["toxic"])

    def act(mask):
        with torch.no_grad(), ablator.ablated(loaded.model, mask), \
                capture_activations(loaded.model, [hook], stop_early=False) as cache:
            loaded.model(**enc.model_inputs(), use_cache=False)
        return cache[hook]
    x, new = act(torch.zeros_like(ablate)), act(ablate)
    assert torch.equal(new[:, :-1], x[:, :-1])
    torch.testing.assert_close(new[:, -1], sae.decode(sae.encode(x[:, -1])), atol=1e-5, rtol=1e-5)
