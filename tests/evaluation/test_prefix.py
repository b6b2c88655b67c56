"""Forwards from a cached middle-layer residual equal full forwards, with and without interventions at or after
that layer (every position, or only the last n tokens)."""
import contextlib

import pytest
import torch

from refusal.evaluation.interventions import ActAdd, FeatureEdit, intervene
from refusal.evaluation.measure import last_logits
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import decoder_layers


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


@contextlib.contextmanager
def lengths_seen(modules: dict):
    """Inside, ``{name: [sequence length of every forward into that module]}`` for ``modules`` {name: module}."""
    seen = {name: [] for name in modules}

    def record(name):
        return lambda m, args, kwargs: seen[name].append(int((args[0] if args else kwargs["hidden_states"]).shape[1]))
    handles = [m.register_forward_pre_hook(record(name), with_kwargs=True) for name, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _counted(model) -> dict:
    """The embedding (its input ids) and every decoder layer, by name, for ``lengths_seen``."""
    return {"embed": model.get_input_embeddings(), **dict(enumerate(decoder_layers(model)))}


@pytest.mark.parametrize("positions,layer", [(2, 0), (2, 2), (3, 3)])
def test_tail_interventions_run_from_the_cached_prefix_and_match_the_full_forward(loaded, prompts, random_sae,
                                                                                  positions, layer):
    fmt = ChatFormatter(loaded.tokenizer)
    sae = random_sae(seed=5)
    feats = torch.zeros(sae.d_sae, dtype=torch.bool)
    feats[:6] = True
    ivs = [FeatureEdit(f"blocks.{layer}.hook_resid_pre", sae, feats, "zero"),
           ActAdd("blocks.3.hook_resid_post", torch.linspace(-2.0, 2.0, 64))]
    cached = PrefixCachedLogits(loaded.model, fmt, prompts, 3, layer, tail=3)
    base = last_logits(loaded.model, fmt, prompts, 3)
    torch.testing.assert_close(cached(), base, rtol=1e-5, atol=1e-5)
    with intervene(loaded.model, ivs, positions=positions):
        with lengths_seen(_counted(loaded.model)) as seen:
            got = cached()
        want = last_logits(loaded.model, fmt, prompts, 3)
    # three batches, each forwarding only its last 3 tokens, through the layers from the first intervened one
    assert seen.pop("embed") == ([3, 3, 3] if layer == 0 else [])
    assert all(seen[i] == ([3, 3, 3] if i >= layer else []) for i in seen), seen
    assert (want - base).abs().max() > 1e-2  # the interventions change the logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("outer,inner", [(None, None), (2, None), (None, 2), (2, 4)])
def test_interventions_beyond_the_tail_use_the_residual_stream(loaded, prompts, outer, inner):
    """An intervention on every position, or on more than the tail, changes the prefix: the tail cache is not used."""
    fmt = ChatFormatter(loaded.tokenizer)
    cached = PrefixCachedLogits(loaded.model, fmt, prompts, 3, 2, tail=3)
    with intervene(loaded.model, [ActAdd("blocks.2.hook_resid_pre", torch.linspace(-2.0, 2.0, 64))], outer), \
            intervene(loaded.model, [ActAdd("blocks.3.hook_resid_pre", torch.linspace(2.0, -1.0, 64))], inner):
        with lengths_seen(_counted(loaded.model)) as seen:
            got = cached()
        want = last_logits(loaded.model, fmt, prompts, 3)
    # the layer-2 residual was computed by full-length forwards (stopped early), never a tail run
    assert 3 not in seen["embed"] and seen["embed"] and 3 not in seen[2]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_prompt_no_longer_than_the_tail_leaves_its_batch_on_full_forwards(loaded, prompts):
    fmt = ChatFormatter(loaded.tokenizer)
    tail = int(fmt.encode([min(prompts, key=len)]).n_tokens[0])
    cached = PrefixCachedLogits(loaded.model, fmt, prompts, 3, 1, tail=tail)
    assert cached._caches[0] is None and any(c is not None for c in cached._caches)
    ivs = [ActAdd("blocks.1.hook_resid_pre", torch.linspace(-2.0, 2.0, 64))]
    with intervene(loaded.model, ivs, positions=2):
        got, want = cached(), last_logits(loaded.model, fmt, prompts, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_that_ignores_the_cache_falls_back_from_the_tail(loaded, prompts):
    fmt = ChatFormatter(loaded.tokenizer)
    model = loaded.model
    original = model.model.forward

    def forgetful(*args, cache=None, **kwargs):  # a decoder that drops the cached prefix it is given
        return original(*args, cache=None, **kwargs)

    model.model.forward = forgetful
    try:
        cached = PrefixCachedLogits(model, fmt, prompts, 3, 2, tail=3)
        got = cached()
    finally:
        del model.model.forward
    assert cached.tail == 0
    torch.testing.assert_close(got, last_logits(model, fmt, prompts, 3), rtol=1e-5, atol=1e-5)
