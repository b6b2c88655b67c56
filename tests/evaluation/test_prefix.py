"""Forwards from a cached middle-layer residual equal full forwards, with and without interventions at or after
that layer (every position, or only the last n tokens)."""
import pytest
import torch

from refusal.evaluation.interventions import ActAdd, FeatureEdit, intervene
from refusal.evaluation.measure import last_logits
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer
from refusal.model.chat import ChatFormatter


@pytest.fixture(scope="module")
def prompts(texts):
    return texts["toxic"] + texts["safe"]


def test_rows_come_back_in_the_prompts_order(loaded, prompts):
    """Batches are formed by length; each row must still be its own prompt's logits (one unpadded forward each)."""
    fmt = ChatFormatter(loaded.tokenizer)
    assert sorted(prompts, key=len) != prompts  # the batching reorders these prompts
    alone = torch.cat([last_logits(loaded.model, fmt, [p], 1) for p in prompts])
    torch.testing.assert_close(last_logits(loaded.model, fmt, prompts, 3), alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(PrefixCachedLogits(loaded.model, fmt, prompts, 3, 2)(), alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("start", [1, 2, 3])
def test_no_intervention_matches_the_full_forward(loaded, prompts, start):
    fmt = ChatFormatter(loaded.tokenizer)
    cached = PrefixCachedLogits(loaded.model, fmt, prompts, 3, start)
    assert cached.start == start
    torch.testing.assert_close(cached(), last_logits(loaded.model, fmt, prompts, 3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", [None, 2])
def test_interventions_after_the_start_match_the_full_forward(loaded, prompts, random_sae, positions):
    fmt = ChatFormatter(loaded.tokenizer)
    sae = random_sae(seed=5)
    feats = torch.zeros(sae.d_sae, dtype=torch.bool)
    feats[:6] = True
    ivs = [FeatureEdit("blocks.2.hook_resid_post", sae, feats, "zero"),
           ActAdd("blocks.3.hook_resid_pre", torch.linspace(-2.0, 2.0, 64))]
    start = first_layer([iv.hook for iv in ivs], 4)
    assert start == 2
    cached = PrefixCachedLogits(loaded.model, fmt, prompts, 3, start)
    base = last_logits(loaded.model, fmt, prompts, 3)
    with intervene(loaded.model, ivs, positions=positions):
        want = last_logits(loaded.model, fmt, prompts, 3)
        got = cached()
    assert (want - base).abs().max() > 1e-2  # the interventions change the logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_that_changes_its_embeddings_falls_back_to_full_forwards(loaded, prompts):
    fmt = ChatFormatter(loaded.tokenizer)
    model = loaded.model
    original = model.model.forward

    def scaled(*args, inputs_embeds=None, **kwargs):  # like Gemma: the decoder rescales whatever it is given
        return original(*args, inputs_embeds=None if inputs_embeds is None else inputs_embeds * 2.0, **kwargs)

    model.model.forward = scaled
    try:
        cached = PrefixCachedLogits(model, fmt, prompts, 3, 2)
        got = cached()
    finally:
        del model.model.forward
    assert cached.start == 0
    torch.testing.assert_close(got, last_logits(model, fmt, prompts, 3), rtol=1e-5, atol=1e-5)
