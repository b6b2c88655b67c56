"""Every intervention on the tiny model against a hand computation, at the configured positions, and during
generation with the KV cache."""
import pytest
import torch

from refusal.evaluation.interventions import (ActAdd, DirectionalAblation, FeatureEdit, ProjectionClamp, Reconstruct,
                                              ZeroAblate, directional_ablation, intervene)
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations

HOOK = "blocks.1.hook_resid_post"


def _act(loaded, enc, hook=HOOK, interventions=(), positions=None) -> torch.Tensor:
    """The activation at ``hook`` as the rest of the model sees it (after the interventions)."""
    with torch.no_grad(), intervene(loaded.model, list(interventions), positions), \
            capture_activations(loaded.model, [hook], stop_early=False) as cache:
        loaded.model(**enc.model_inputs(), use_cache=False)
    return cache[hook]


@pytest.fixture(scope="module")
def enc(loaded, texts):
    return ChatFormatter(loaded.tokenizer).encode(texts["toxic"] + texts["safe"])


@pytest.fixture(scope="module")
def sae(random_sae):
    return random_sae(seed=3)


def _features(sae, idx):
    mask = torch.zeros(sae.d_sae, dtype=torch.bool)
    mask[idx] = True
    return mask


@pytest.mark.parametrize("mode,value", [("mean", None), ("zero", None), ("clamp", 2.5), ("scale", -3.0)])
def test_feature_edit_changes_only_the_chosen_features(loaded, enc, sae, mode, value):
    x = _act(loaded, enc)
    f = sae.encode(x)
    fired = torch.nonzero((f > 0).float().mean((0, 1)) > 0.2).flatten()[:3]
    assert len(fired) == 3, "the random SAE must fire for the test to mean anything"
    mask = _features(sae, fired)
    f_bar = f.mean((0, 1))
    if mode == "mean":
        value = f_bar
    new = _act(loaded, enc, interventions=[FeatureEdit(HOOK, sae, mask, mode, value)])
    target = {"mean": f_bar.expand_as(f), "zero": torch.zeros_like(f), "clamp": torch.full_like(f, 2.5),
              "scale": -3.0 * f}[mode]
    f_new = torch.where(mask, target, f)
    # hand computation: x' = x − W_decᵀ (f_S − f'_S); the error term x − decode(f) is unchanged
    expected = x - ((f - f_new) * mask) @ sae.W_dec
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new - sae.decode(f_new), x - sae.decode(f), atol=1e-5, rtol=1e-5)
    assert (new - x).abs().max() > 1e-3


def test_feature_edit_of_no_feature_is_the_identity(loaded, enc, sae):
    x = _act(loaded, enc)
    new = _act(loaded, enc, interventions=[FeatureEdit(HOOK, sae, _features(sae, []), "zero")])
    assert torch.equal(new, x)


def test_error_node_ablation_sets_the_error_term(loaded, enc, sae):
    x = _act(loaded, enc)
    f = sae.encode(x)
    e = x - sae.decode(f)
    e_bar, f_bar = e.mean((0, 1)), f.mean((0, 1))
    mask = _features(sae, [0, 5])
    new = _act(loaded, enc, interventions=[FeatureEdit(HOOK, sae, mask, "mean", f_bar, error=True, error_value=e_bar)])
    expected = sae.decode(torch.where(mask, f_bar, f)) + e_bar
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=1e-5)
    # every feature and the error node ablated -> the mean activation (decode is affine)
    everything = _features(sae, list(range(sae.d_sae)))
    new = _act(loaded, enc, interventions=[FeatureEdit(HOOK, sae, everything, "mean", f_bar, error=True, error_value=e_bar)])
    torch.testing.assert_close(new, x.mean((0, 1)).expand_as(x), atol=1e-5, rtol=1e-5)


def test_reconstruct_and_zero(loaded, enc, sae):
    x = _act(loaded, enc)
    torch.testing.assert_close(_act(loaded, enc, interventions=[Reconstruct(HOOK, sae)]), sae.decode(sae.encode(x)))
    assert torch.equal(_act(loaded, enc, interventions=[ZeroAblate(HOOK)]), torch.zeros_like(x))


def test_directional_ablation_and_actadd(loaded, enc):
    x = _act(loaded, enc)
    r = torch.randn(64, generator=torch.Generator().manual_seed(0))
    rhat = r / r.norm()
    new = _act(loaded, enc, interventions=[DirectionalAblation(HOOK, r)])
    torch.testing.assert_close(new, x - (x @ rhat)[..., None] * rhat, atol=1e-5, rtol=1e-5)
    assert (new @ rhat).abs().max() < 1e-4
    added = _act(loaded, enc, interventions=[ActAdd(HOOK, r, coeff=0.5)])
    torch.testing.assert_close(added, x + 0.5 * r, atol=1e-5, rtol=1e-5)


def test_projection_clamp_sets_the_component_per_position_and_keeps_the_rest(loaded, enc):
    x = _act(loaded, enc)
    gen = torch.Generator().manual_seed(2)
    r, v = torch.randn(3, 64, generator=gen), torch.tensor([0.5, -1.0, 2.0])  # one direction and value per position
    new = _act(loaded, enc, interventions=[ProjectionClamp(HOOK, r, v)], positions=3)
    rhat = r / r.norm(dim=-1, keepdim=True)
    tail = new[:, -3:]
    torch.testing.assert_close((tail * rhat).sum(-1), v.expand(tail.shape[0], 3), atol=1e-4, rtol=1e-4)
    moved = tail - x[:, -3:]  # only along each position's direction
    torch.testing.assert_close(moved - (moved * rhat).sum(-1, keepdim=True) * rhat, torch.zeros_like(moved),
                               atol=1e-5, rtol=0)
    assert torch.equal(new[:, :-3], x[:, :-3])
    zero = _act(loaded, enc, interventions=[ProjectionClamp(HOOK, r[0])])  # value 0: directional ablation
    torch.testing.assert_close(zero, _act(loaded, enc, interventions=[DirectionalAblation(HOOK, r[0])]), atol=1e-5,
                               rtol=1e-5)


def test_directional_ablation_everywhere_removes_the_direction_from_every_hook(loaded, enc):
    r = torch.randn(64, generator=torch.Generator().manual_seed(1))
    ivs = directional_ablation(r, loaded.n_layers)
    assert len(ivs) == 3 * loaded.n_layers and {iv.hook.split(".", 2)[2] for iv in ivs} == {
        "hook_resid_pre", "hook_attn_out", "hook_mlp_out"}
    # the residual stream is a sum of r-free terms: no layer's output has a component along r
    for layer in range(loaded.n_layers):
        out = _act(loaded, enc, f"blocks.{layer}.hook_resid_post", ivs)
        assert (out @ (r / r.norm())).abs().max() < 1e-3


def test_positions_edit_only_the_prompt_tail(loaded, enc):
    x = _act(loaded, enc)
    r = torch.ones(64)
    new = _act(loaded, enc, interventions=[ActAdd(HOOK, r)], positions=3)
    torch.testing.assert_close(new[:, -3:], x[:, -3:] + 1)
    assert torch.equal(new[:, :-3], x[:, :-3])


def test_hooks_are_removed_on_exit(loaded, enc):
    x = _act(loaded, enc)
    with intervene(loaded.model, [ZeroAblate(HOOK)]):
        pass
    assert torch.equal(_act(loaded, enc), x)


def _greedy(model, enc, steps: int) -> torch.Tensor:
    """Greedy continuation by full forwards without a cache (the reference for cached generation)."""
    ids, mask = enc.input_ids, enc.attention_mask
    for _ in range(steps):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        nxt = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].argmax(-1)
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids[:, enc.seq_len:]


def _generate(loaded, enc, steps: int) -> torch.Tensor:
    out = loaded.model.generate(**enc.model_inputs(), max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    return out[:, enc.seq_len:]


@torch.no_grad()
def test_every_position_applies_during_cached_generation(loaded, enc):
    ivs = [ActAdd("blocks.2.hook_resid_pre", torch.randn(64, generator=torch.Generator().manual_seed(2)), 3.0)]
    with intervene(loaded.model, ivs):
        cached, reference = _generate(loaded, enc, 4), _greedy(loaded.model, enc, 4)
    assert torch.equal(cached, reference)
    assert not torch.equal(cached, _generate(loaded, enc, 4))  # the intervention changed the text


@torch.no_grad()
@pytest.mark.parametrize("layer", [0, 2])
def test_tail_positions_edit_the_prefill_only_during_generation(loaded, enc, layer):
    r = torch.randn(64, generator=torch.Generator().manual_seed(4))
    ivs = [ActAdd(f"blocks.{layer}.hook_resid_pre", r, 5.0)]
    with intervene(loaded.model, ivs, positions=2):
        cached = _generate(loaded, enc, 3)
        edited = loaded.model(**enc.model_inputs(), use_cache=False).logits[:, -1]  # a forward with no cache edits
        prefill = loaded.model(**enc.model_inputs(), use_cache=True).logits[:, -1]
    # the prefill of a cached forward is edited too, at a layer after the first (whose cache entry is filled first)
    torch.testing.assert_close(prefill, edited)
    assert not torch.allclose(edited, loaded.model(**enc.model_inputs(), use_cache=False).logits[:, -1])
    assert torch.equal(cached[:, 0], edited.argmax(-1))
    # reference: prefill with the edit, then decode from its cache with no edit at all
    model, ids, mask = loaded.model, enc.input_ids, enc.attention_mask
    with intervene(model, ivs, positions=2):
        out = model(**enc.model_inputs(), use_cache=True)
    pkv, toks = out.past_key_values, [out.logits[:, -1].argmax(-1)]
    pos = enc.position_ids[:, -1:]
    for _ in range(2):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos + 1
        out = model(input_ids=toks[-1][:, None], attention_mask=mask, position_ids=pos, past_key_values=pkv,
                    use_cache=True)
        pkv = out.past_key_values
        toks.append(out.logits[:, -1].argmax(-1))
    assert torch.equal(cached, torch.stack(toks, 1))
