"""Splicing SAEs leaves the output unchanged and exposes gradients for features and error nodes."""
import pytest
import torch
from circuits_testlib import HOOKS, SAFE, TOXIC, make_cm

from refusal.circuit.splice import run_model, splice
from refusal.model.hooks import HOOK_KINDS


def _plain_logits(cm, enc):
    with torch.no_grad():
        return run_model(cm.model, enc)


@pytest.mark.parametrize("mode", ["read", "capture"])
def test_splice_leaves_output_unchanged(cm, mode):
    enc = cm.encode(TOXIC + SAFE)  # different lengths: left padding exercised
    base = _plain_logits(cm, enc)
    with torch.set_grad_enabled(mode == "read"), splice(cm.model, cm.saes, cm.n_positions,
                                                       {h: mode for h in HOOKS}) as rec:
        logits = run_model(cm.model, enc)
    torch.testing.assert_close(logits, base, atol=1e-5, rtol=1e-5)
    assert set(rec) == set(HOOKS)


def test_set_to_clean_values_is_unchanged_and_to_other_values_is_not(cm):
    enc = cm.encode(TOXIC)
    base = _plain_logits(cm, enc)
    m, clean = cm.capture(enc)
    h = HOOKS[1]
    m_set = cm.patched(enc, {h: clean[h]})
    torch.testing.assert_close(m_set, cm.metric(base), atol=1e-5, rtol=1e-5)
    f, e = clean[h]
    assert (cm.patched(enc, {h: (torch.zeros_like(f), e)}) - m).abs().max() > 1e-4


def test_read_gives_gradients_of_features_and_error_nodes(cm):
    enc = cm.encode(TOXIC)
    m, clean, grads = cm.read(enc)
    for h in HOOKS:
        gf, ge = grads[h]
        assert gf.shape == clean[h][0].shape and ge.shape == clean[h][1].shape
        assert gf.abs().sum() > 0 and ge.abs().sum() > 0
        # features see the residual gradient through the decoder: dm/df = W_dec · dm/de
        torch.testing.assert_close(gf, ge @ cm.saes[h].sae.W_dec.T, atol=1e-6, rtol=1e-4)


def test_read_gradient_equals_unspliced_gradient(cm):
    """Splicing must not change dm/dx at a hook (the gradient reaching upstream nodes is the full one)."""
    enc = cm.encode(TOXIC)
    _, _, grads = cm.read(enc)
    P = cm.n_positions
    # unspliced: gradient w.r.t. the activation at blocks.1 through a plain leaf substitution
    store = {}

    def grab(x):
        leaf = x[:, -P:].detach().requires_grad_(True)
        store["x"] = leaf
        return torch.cat([x[:, :-P], leaf], 1)
    from refusal.model.hooks import register_edit
    from refusal.model.hooks import HookSpec, decoder_layers
    handle = register_edit(decoder_layers(cm.model)[1], HookSpec(1, HOOK_KINDS.index("hook_resid_post")), grab)
    try:
        m = cm.metric(run_model(cm.model, enc))
        (g,) = torch.autograd.grad(m.sum(), [store["x"]])
    finally:
        handle.remove()
    torch.testing.assert_close(grads[HOOKS[0]][1], g, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_every_hook_kind_splices_unchanged(frozen_tiny, kind):
    model, tok = frozen_tiny
    hook = f"blocks.2.{kind}"
    from circuits_testlib import random_sae

    from refusal.circuit.splice import HookedSAE
    d_in = 128 if kind == "mlp.hook_post" else 64
    cm = make_cm(model, tok, hooks=(hook,), saes={hook: HookedSAE(hook, random_sae(d_in, 16, 0))})
    enc = cm.encode(TOXIC[:3])
    base = _plain_logits(cm, enc)
    m, clean, grads = cm.read(enc)
    torch.testing.assert_close(m, cm.metric(base), atol=1e-5, rtol=1e-5)
    assert grads[hook][1].abs().sum() > 0


def test_runs_forward_only_the_node_positions_over_the_clean_prefix(cm):
    """Every run on a batch shares its clean cached prefix: the embedding sees the full prompts once (the prefix),
    then only the node positions, and the metric and gradients equal a full forward's (tests above)."""
    enc = cm.encode(TOXIC)
    seen = []
    handle = cm.model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(int(o.shape[1])))
    try:
        cm.read(enc)
        cm.capture(enc)
    finally:
        handle.remove()
    assert seen == [enc.seq_len - cm.n_positions, cm.n_positions, cm.n_positions]
