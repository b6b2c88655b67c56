"""Attribution methods: a planted mechanism is found, AtP agrees with exact patching, options act."""
import numpy as np
import pytest
import torch
from circuits_testlib import HOOKS, SAFE, TOXIC, make_cm
from scipy.stats import mannwhitneyu, spearmanr

from refusal.behavior.score import resolve_refusal_tokens
from refusal.circuit.attribution import attribute, node_space
from refusal.circuit.patch import PatchSource
from refusal.circuit.splice import HookedSAE
from refusal.errors import ConfigError
from refusal.model.tiny import tiny_llama
from refusal.sae.model import SparseAutoencoder

PLANTED = [0, 1, 2, 3]
LAST = "blocks.3.hook_resid_post"


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    u = mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided").statistic
    return float(u / (positive.sum() * (~positive).sum()))


@pytest.fixture(scope="module")
def planted():
    return build_planted()


def build_planted():
    """A tiny model whose refusal logits read only the decoder directions of SAE features 0-3 at the last layer.

    Decoder rows: features 0-3 span an orthonormal subspace Q_S; the other 28 features are random unit vectors
    orthogonal to it. The unembedding of the refusal tokens lies in span(Q_S), every other token's is 0, so
    only features 0-3 move the refusal score (others only through the final RMSNorm's scale). Features 0-3 get
    a large encoder bias so that they are active on every prompt.
    """
    model, tok = tiny_llama(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=1)
    tok.padding_side = "left"
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    basis = q.T  # rows orthonormal
    rest = torch.randn(28, 60, generator=g) @ basis[4:]
    sae = SparseAutoencoder(64, 32, "relu_l1")
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([basis[:4], rest / rest.norm(dim=1, keepdim=True)]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.zero_()
        sae.b_enc.zero_()
        sae.b_enc[PLANTED] = 3.0
        ref = resolve_refusal_tokens(tok)
        model.lm_head.weight.zero_()
        w = torch.randn(len(ref), 4, generator=g) @ basis[:4]
        model.lm_head.weight[ref] = 2.0 * w
    sae.eval().requires_grad_(False)
    cm = make_cm(model, tok, hooks=(LAST,), saes={LAST: HookedSAE(LAST, sae)})
    return cm


@pytest.mark.parametrize("method", ["atp", "ig"])
@pytest.mark.parametrize("patch", ["zero", "mean_safe"])
def test_planted_features_rank_first(planted, method, patch):
    src = PatchSource(patch, planted, SAFE)
    a = attribute(planted, TOXIC, src, method, "sum", ig_steps=8)
    score = a.ie.mean(0).abs().numpy()[:32]  # features (the error node is last)
    positive = np.isin(np.arange(32), PLANTED)
    assert auroc(score, positive) >= 0.95


def test_stats_reference_does_not_know_the_mechanism(planted):
    """The activation-difference reference method ranks by |Δf| only; the planted features are not singled out."""
    src = PatchSource("mean_safe", planted, SAFE)
    a = attribute(planted, TOXIC, src, "stats", "sum")
    atp = attribute(planted, TOXIC, src, "atp", "sum")
    positive = np.isin(np.arange(32), PLANTED)
    assert auroc(a.ie.mean(0).abs().numpy()[:32], positive) < auroc(atp.ie.mean(0).abs().numpy()[:32], positive)


@pytest.mark.parametrize("architecture", ["relu_l1", "topk"])
def test_atp_agrees_with_exact_patching(frozen_tiny, architecture):
    cm = make_cm(*frozen_tiny, architecture=architecture, d_sae=48)
    src = PatchSource("mean_safe", cm, SAFE)
    atp = attribute(cm, TOXIC, src, "atp", "sum").ie.mean(0)
    exact = attribute(cm, TOXIC, src, "exact", "sum").ie.mean(0)
    rho = spearmanr(atp.numpy(), exact.numpy()).statistic
    live = (exact != 0).numpy()  # nodes whose patch value differs from the clean value somewhere
    rho_live = spearmanr(atp.numpy()[live], exact.numpy()[live]).statistic
    assert live.sum() >= 15
    assert rho >= 0.8 and rho_live >= 0.8, (rho, rho_live)


def test_ig_is_complete_at_the_last_hook(cm):
    """Σ IG over every node of the deepest hook = m(clean) − m(that hook patched) (completeness)."""
    src = PatchSource("mean_safe", cm, SAFE)
    a = attribute(cm, TOXIC, src, "ig", "sum", ig_steps=16)
    space = node_space(cm, "sum")
    total = a.ie[:, space.hook_slice(1)].double().sum(1)
    torch.testing.assert_close(total, a.m_clean - a.m_patch, atol=2e-3, rtol=0.05)


def test_exact_refuses_too_many_nodes(cm):
    src = PatchSource("zero", cm, SAFE)
    with pytest.raises(ConfigError, match="exact_max_nodes=10"):
        attribute(cm, TOXIC, src, "exact", "sum", exact_max_nodes=10)


@pytest.mark.parametrize("option,values", [
    ("aggregation", ["sum", "mean", "max", "none"]),
    ("method", ["atp", "ig", "stats"]),
    ("patch", ["mean_safe", "zero", "paired"]),
])
def test_every_option_changes_the_attributions(cm, option, values):
    results = []
    for v in values:
        kw = {"aggregation": "sum", "method": "atp", "patch": "mean_safe", option: v}
        src = PatchSource(kw["patch"], cm, SAFE)
        results.append(attribute(cm, TOXIC, src, kw["method"], kw["aggregation"], ig_steps=4).ie)
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            assert results[i].shape != results[j].shape or not torch.allclose(results[i], results[j])


def test_aggregation_none_keeps_positions_and_sums_to_sum(cm):
    src = PatchSource("mean_safe", cm, SAFE)
    per_pos = attribute(cm, TOXIC, src, "atp", "none").ie
    summed = attribute(cm, TOXIC, src, "atp", "sum").ie
    P = cm.n_positions
    assert per_pos.shape[1] == summed.shape[1] * P
    torch.testing.assert_close(per_pos.view(len(TOXIC), -1, P).sum(-1), summed, atol=1e-5, rtol=1e-4)


def test_positions_last_and_metric_logit_diff_change_the_attributions(frozen_tiny):
    model, tok = frozen_tiny
    base = make_cm(model, tok)
    out = {}
    for name, c in {"base": base, "last": make_cm(model, tok, positions="last", saes=base.saes),
                    "logit_diff": make_cm(model, tok, metric="logit_diff", saes=base.saes)}.items():
        out[name] = attribute(c, TOXIC, PatchSource("mean_safe", c, SAFE), "atp", "sum")
    assert base.n_positions > 1
    assert not torch.allclose(out["base"].ie, out["last"].ie)
    assert not torch.allclose(out["base"].m_clean, out["logit_diff"].m_clean)


def test_per_prompt_rows_do_not_depend_on_batching(frozen_tiny):
    model, tok = frozen_tiny
    a = make_cm(model, tok, batch_size=1)
    b = make_cm(model, tok, batch_size=5, saes=a.saes)
    ia = attribute(a, TOXIC, PatchSource("mean_safe", a, SAFE), "atp", "sum").ie
    ib = attribute(b, TOXIC, PatchSource("mean_safe", b, SAFE), "atp", "sum").ie
    torch.testing.assert_close(ia, ib, atol=1e-5, rtol=1e-3)
    assert len(HOOKS) == 2
