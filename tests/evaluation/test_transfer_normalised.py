"""The transfer matrix normalised by headroom (DESIGN.md §4): each column's drop divided by how far that category's
refusal stands above the safe prompts', only categories the model refuses counted, and the rule deciding by the
transfer ratio's CI against its margins, never by "p > alpha"."""
import numpy as np
import pytest

from refusal.circuit.verdict import TransferRule
from refusal.errors import ConfigError
from refusal.evaluation.transfer import counted_categories, headroom, share_interval, shares, transfer_statistics

C, N, S = 3, 10, 12  # categories, prompts per category, safe prompts


def _layout():
    labels = np.concatenate([np.repeat(np.arange(C), N), np.full(S, -1)])
    groups = [np.flatnonzero(labels == c) for c in range(C)]
    return labels, groups, np.flatnonzero(labels == -1)


def _scores(heads, seed=0, noise=0.05):
    """Baseline scores: safe prompts around -2, category c's around -2 + heads[c]."""
    labels, _, _ = _layout()
    rng = np.random.default_rng(seed)
    return np.where(labels == -1, -2.0, -2.0 + np.asarray(heads)[np.maximum(labels, 0)]) + rng.normal(0, noise,
                                                                                                    len(labels))


def test_shares_are_cell_means_over_the_column_headroom():
    labels, groups, safe = _layout()
    rng = np.random.default_rng(3)
    d, base = rng.normal(size=(C, len(labels))), _scores([1.0, 2.0, 4.0])
    M = shares(d, groups, base, safe)
    for a in range(C):
        for b in range(C):
            h = base[groups[b]].mean() - base[safe].mean()
            assert M[a, b] == pytest.approx(d[a, groups[b]].mean() / h)
    assert np.allclose(headroom(base, groups, safe), [base[g].mean() - base[safe].mean() for g in groups])


def test_a_strongly_refused_category_no_longer_dominates_the_ratio():
    """Category 2 refuses 4x as strongly (headroom 4 vs 1). Each row removes 90% of its own category's refusal and
    an absolute 0.9 of every other category's score. Raw drops: the diagonal is inflated by category 2's large own
    drop (rho = 0.9 / 1.8 = 0.5); as shares of headroom every diagonal cell is 0.9 and the off-diagonal cells are
    0.9 (into categories 0, 1) or 0.225 (into category 2): rho = (4 x 0.9 + 2 x 0.225) / 6 / 0.9 = 0.75."""
    labels, groups, safe = _layout()
    heads = np.array([1.0, 1.0, 4.0])
    base = _scores(heads, noise=0.0)
    d = np.zeros((C, len(labels)))
    for a in range(C):
        for b in range(C):
            d[a, groups[b]] = 0.9 * heads[b] if a == b else 0.9
    raw = transfer_statistics(d[:, labels >= 0], labels[labels >= 0], None, 200, 0, 0.95, 0)
    norm = transfer_statistics(d, labels, None, 200, 0, 0.95, 0, base=base)
    assert norm["normalised"] and norm["n_safe"] == S and not raw["normalised"]
    assert raw["transfer_ratio"] == pytest.approx(0.5)
    assert norm["mean_diagonal"] == pytest.approx(0.9) and norm["transfer_ratio"] == pytest.approx(0.75)


def test_block_diagonal_shares_are_modular_with_a_small_p():
    labels, groups, safe = _layout()
    base = _scores([1.0, 2.0, 3.0])
    heads = headroom(base, groups, safe)
    d = np.zeros((C, len(labels)))
    for c in range(C):
        d[c, groups[c]] = 0.8 * heads[c]
    d += np.random.default_rng(2).normal(0, 0.02, d.shape)
    d_random = np.random.default_rng(3).normal(0, 0.02, d.shape)
    st = transfer_statistics(d, labels, d_random, 300, 300, 0.95, 0, base=base)
    assert st["specificity"] == pytest.approx(0.8, abs=0.05) and st["p_value"] < 0.01
    assert TransferRule().decide(st)["verdict"] == "modular"


def test_normalised_statistic_needs_safe_prompts():
    labels = np.repeat(np.arange(2), 4)
    with pytest.raises(ConfigError, match="2 safe prompts"):
        transfer_statistics(np.ones((2, 8)), labels, None, 10, 10, 0.95, 0, base=np.ones(8))


def test_counted_categories_are_those_refused_above_the_safe_floor():
    labels, groups, safe = _layout()
    base = _scores([1.5, 0.0, -0.5], noise=0.3)  # refused; at the floor; below it
    out = counted_categories(["a", "b", "c"], base, groups, safe, 500, 0.95, 0)
    assert [out[c]["counted"] for c in "abc"] == [True, False, False]
    assert out["a"]["ci_low"] > 0 and out["b"]["ci_low"] <= 0 <= out["b"]["ci_high"]
    assert out["a"]["headroom"] == pytest.approx(base[groups[0]].mean() - base[safe].mean())


def test_share_interval_is_the_mean_drop_over_the_headroom_with_a_seeded_ci():
    rng = np.random.default_rng(4)
    base, safe_base = 1.0 + rng.normal(0, 0.2, 12), -1.0 + rng.normal(0, 0.2, 20)
    drop = 0.5 * (base - safe_base.mean()) + rng.normal(0, 0.05, 12)
    est, low, high = share_interval(drop, base, safe_base, 500, 0.95, 7)
    assert est == pytest.approx(drop.mean() / (base.mean() - safe_base.mean()))
    assert low < est < high and high - low < 0.2
    assert share_interval(drop, base, safe_base, 500, 0.95, 7) == (est, low, high)


def _stats(rho_low, rho_high, p=0.01, diag=1.0, beats=0.5):
    return {"mean_diagonal": diag, "transfer_ratio": (rho_low + rho_high) / 2, "p_value": p, "specificity": 0.1,
            "ci": {"transfer_ratio": {"low": rho_low, "high": rho_high}, "beats_random": {"low": beats, "high": 1}}}


@pytest.mark.parametrize("low,high,p,verdict", [
    (0.8, 1.1, 0.5, "monolithic"),              # CI low exactly at the margin
    (0.8 - 1e-9, 1.1, 0.5, "inconclusive"),     # just below: the CI crosses 0.8
    (0.8, 1.1, 0.001, "monolithic"),            # a small p does not stop sameness shown by the CI
    (-0.1, 0.5, 0.01, "modular"),               # CI high exactly at the margin
    (-0.1, 0.5 + 1e-9, 0.01, "inconclusive"),
    (-0.1, 0.3, 0.2, "inconclusive"),           # small ratio, but S not shown
    (0.5 + 1e-9, 0.8 - 1e-9, 0.01, "mixed"),    # strictly between the margins
    (0.5, 0.7, 0.01, "inconclusive"),           # touches the modular margin: not strictly between
    (0.2, 1.0, 0.5, "inconclusive"),            # wide: "p > alpha" is never read as sameness
])
def test_transfer_rule_reads_the_ratio_ci_against_its_margins(low, high, p, verdict):
    assert TransferRule().decide(_stats(low, high, p))["verdict"] == verdict


def test_transfer_rule_without_a_ci_or_an_effect_is_inconclusive():
    st = _stats(0.9, 1.0)
    st["ci"].pop("transfer_ratio")
    assert TransferRule().decide(st)["verdict"] == "inconclusive"
    assert TransferRule().decide(_stats(0.9, 1.0, diag=0.0))["verdict"] == "inconclusive"
    assert TransferRule().decide(_stats(0.9, 1.0, beats=-0.1))["verdict"] == "inconclusive"
    assert TransferRule(modular_max_transfer=0.3, monolithic_min_transfer=0.95).decide(
        _stats(0.9, 1.0))["verdict"] == "inconclusive"  # the margins are the config's


@pytest.mark.parametrize("own_low,verdict", [(0.5, "monolithic"), (0.5 - 1e-9, "inconclusive"), (0.1, "inconclusive")])
def test_normalised_rows_must_remove_enough_of_their_own_refusal(own_low, verdict):
    """Uniform but weak (each row removes 11% of every category's refusal, as 16 features do on the demo organism)
    is not read as monolithic: the matrix is about a small slice of the mechanism."""
    st = {**_stats(0.9, 1.1, p=0.9), "normalised": True}
    st["ci"]["mean_diagonal"] = {"low": own_low, "high": own_low + 0.1}
    assert TransferRule().decide(st)["verdict"] == verdict
    st["normalised"] = False  # raw score drops: no share to compare with
    assert TransferRule().decide(st)["verdict"] == "monolithic"


def test_equal_size_rows_are_the_top_features_per_hook_and_ties_at_zero_are_noted():
    """Two hooks of 6 features: each row is its category's top 2 |mean IE| features per hook (error nodes never);
    a category whose ranking has a single nonzero feature at a hook fills with ties at 0 and the note says so."""
    from types import SimpleNamespace

    import torch

    from refusal.circuit.nodes import NodeSpace
    from refusal.evaluation.transfer import TransferSettings, row_masks
    space = NodeSpace(("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"), (6, 6), 1, "sum")
    ie = {"a": torch.tensor([0.1, -0.9, 0.3, 0, 0, 0, 5.0, 0, 0.2, 0.05, 0, -0.4, 0, 7.0]),  # error nodes 6, 13
          "b": torch.tensor([0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0, 0, 0, -0.8, 0.0])}
    rows = [{"category": c, "ie": v} for c, v in ie.items()]
    inputs = SimpleNamespace(attributions={"rows": [{"category": r["category"]} for r in rows],
                                           "ie": torch.stack([r["ie"] for r in rows]),
                                           "m_clean": torch.zeros(2), "m_patch": torch.zeros(2)}, circuits={})
    s = TransferSettings(False, False, 0, 10, TransferRule(), size=2)
    notes = []
    masks = row_masks(SimpleNamespace(space=space), inputs, ["a", "b"], s, notes)
    assert torch.nonzero(masks["a"]).flatten().tolist() == [1, 2, 8, 11]
    assert torch.nonzero(masks["b"]).flatten().tolist() == [0, 4, 7, 12] and masks["b"].sum() == masks["a"].sum()
    assert notes == ["row b: only 2 of its 4 nodes have |IE| > 0 (the rest are ties at 0, lowest index first)"]
