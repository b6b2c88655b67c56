"""The refusal-writing MLP neurons on the tiny model: the exact decomposition closes, neuron edits act on the chosen
neurons only, decoder shares by hand, and the stage's steering conditions."""
from __future__ import annotations

import pytest
import torch

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import resolve_refusal_tokens
from refusal.evaluation.context import EvalContext
from refusal.evaluation.interventions import NeuronEdit, intervene
from refusal.evaluation.neurons import NeuronSettings, decompose, decoder_share, run_neurons, top_neurons
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations


def test_neuron_edits_scale_or_clamp_the_chosen_neurons_only():
    x = torch.arange(12.0).reshape(1, 2, 6)
    scaled = NeuronEdit("blocks.0.mlp.hook_post", torch.tensor([1, 4]), "scale", 0.0).edit(x)
    want = x.clone()
    want[..., [1, 4]] = 0
    assert torch.equal(scaled, want)
    clamped = NeuronEdit("blocks.0.mlp.hook_post", torch.tensor([0, 5]), "clamp", torch.tensor([7.0, -1.0])).edit(x)
    assert clamped[..., 0].tolist() == [[7.0, 7.0]] and clamped[..., 5].tolist() == [[-1.0, -1.0]]
    assert torch.equal(clamped[..., 1:5], x[..., 1:5])
    with pytest.raises(ValueError, match="mlp.hook_post"):
        NeuronEdit("blocks.0.hook_resid_pre", torch.tensor([0]), "scale", 0.0)


@pytest.fixture()
def ctx(loaded, tmp_path):
    from refusal.data import PromptSet
    from refusal.data.records import PromptRecord

    prompts = PromptSet([PromptRecord(f"{lb}-{i}", f"{lb} prompt number {i}", "c" if lb == "toxic" else "benign",
                                      lb, "test", "test") for lb in ("toxic", "safe", "hard") for i in range(3)])
    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts, SubstringJudge(REFUSAL_SUBSTRINGS),
                       resolve_refusal_tokens(loaded.tokenizer), batch_size=2, max_new_tokens=2,
                       boot=Bootstrap(50, 0.95, "percentile"), seed=0, out_dir=tmp_path)


def test_the_decomposition_closes(ctx, texts):
    r = torch.randn(64, generator=torch.Generator().manual_seed(0))
    dec = decompose(ctx, texts["toxic"], texts["safe"], r, 3, -1)
    assert dec["neurons"].shape == (3, 128)
    assert abs(dec["closure"]) < 1e-6 * max(1.0, abs(dec["total"]))
    assert abs(dec["total"]) > 1e-3  # not trivially zero
    parts = torch.tensor([[3.0, -1.0], [5.0, 0.5]])
    assert top_neurons(parts, 3) == [(1, 0), (0, 0), (1, 1)]


def test_decoder_share_by_hand():
    r = torch.tensor([3.0, 0.0, 4.0, 0.0])
    dirs = torch.eye(4)
    got = decoder_share(dirs, r, (1, 2))
    assert got["shares"] == {1: pytest.approx(16 / 25), 2: pytest.approx(1.0)}
    assert [x["feature"] for x in got["top"][:2]] == [2, 0]


def test_the_stage_steers_the_top_neurons(ctx, texts):
    r = torch.randn(64, generator=torch.Generator().manual_seed(1))
    out = run_neurons(ctx, texts["toxic"], texts["safe"], {"selected": {"layer": 2, "position": -1}}, r,
                      NeuronSettings((1, 5), 4))
    assert len(out["top"]) == 4 and out["top"][0]["part"] >= out["top"][-1]["part"]
    assert set(out["top_k_share"]) == {1, 5}
    conds = {(row["condition"], row["label"]) for row in out["rates"] if row["category"] == "all"}
    assert {("neurons_ablate", "toxic"), ("neurons_ablate_random", "hard"), ("neurons_induce", "safe")} <= conds
    assert ("neurons_ablate", "safe") not in conds
    layer, n = out["top"][0]["layer"], out["top"][0]["neuron"]
    hook = f"blocks.{layer}.mlp.hook_post"
    enc = ctx.formatter.encode(texts["safe"][:1])
    with intervene(ctx.model, [NeuronEdit(hook, torch.tensor([n]), "scale", 0.0)]), \
            capture_activations(ctx.model, [f"blocks.{layer}.mlp.hook_post"], stop_early=False) as cache:
        ctx.model(**enc.model_inputs(), use_cache=False)
    assert float(cache[hook][..., n].abs().max()) == 0.0
