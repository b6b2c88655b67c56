"""Permutation tests keep their level on exchangeable data and reject a planted category difference;
similarities and the shared core behave on hand-made cases."""
import numpy as np
import pytest
import torch

from refusal.circuit.compare import shared_core, similarities
from refusal.circuit.stats import bootstrap, global_test, pairwise_tests

N_FEATURES, N_PER_CAT, N_CATS = 40, 8, 3


def synthetic(rng: np.random.Generator, planted: float) -> tuple[torch.Tensor, np.ndarray]:
    """Per-prompt attributions: a shared mean effect + noise; with ``planted`` > 0 each category adds its own
    effect on its own 5 features."""
    shared = np.zeros(N_FEATURES)
    shared[:10] = 1.0
    labels = np.repeat(np.arange(N_CATS), N_PER_CAT)
    X = shared + rng.normal(0, 1.0, (len(labels), N_FEATURES))
    for c in range(N_CATS):
        X[labels == c, 10 + 5 * c: 15 + 5 * c] += planted
    return torch.tensor(X), labels


def test_global_test_false_positive_rate_and_power():
    rng = np.random.default_rng(0)
    alpha, n_sets = 0.05, 200
    null_p = []
    for i in range(n_sets):
        X, labels = synthetic(rng, planted=0.0)
        null_p.append(global_test(X, rng.permutation(labels), n_permutations=199, seed=i)["p_value"])
    fpr = float(np.mean(np.array(null_p) <= alpha))
    assert fpr <= 0.06, fpr
    # p-values are uniform-ish under the null: not all tiny, not all 1
    assert 0.3 < float(np.mean(null_p)) < 0.7
    hits = []
    for i in range(30):
        X, labels = synthetic(rng, planted=2.0)
        hits.append(global_test(X, labels, n_permutations=199, seed=i)["p_value"] <= alpha)
    assert np.mean(hits) >= 0.9


def test_p_value_formula_and_determinism():
    X, labels = synthetic(np.random.default_rng(1), planted=3.0)
    r = global_test(X, labels, n_permutations=99, seed=5)
    assert r["p_value"] == pytest.approx(1 / 100)  # (1 + 0) / (1 + 99): nothing in the null reaches it
    assert global_test(X, labels, n_permutations=99, seed=5) == r


def test_pairwise_tests_find_the_one_different_category_with_bh():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 10)
    X = rng.normal(0, 1, (30, N_FEATURES)) + np.r_[np.ones(10), np.zeros(N_FEATURES - 10)]
    X[labels == 2, 20:30] += 3.0  # only category c differs
    rows = pairwise_tests(torch.tensor(X), labels, ["a", "b", "c"], n_permutations=199, seed=0, alpha=0.05)
    differs = {(r["a"], r["b"]): r["differs"] for r in rows}
    assert differs == {("a", "b"): False, ("a", "c"): True, ("b", "c"): True}
    assert all(r["p_adjusted"] >= r["p_value"] for r in rows)


def test_similarities_on_hand_made_circuits():
    ie = torch.tensor([[3.0, 2.0, 1.0, 0.0, 0.0], [3.0, 0.0, 1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 1.0, 2.0]])
    masks = ie != 0
    s = similarities(ie, masks)
    assert s["n_equalised"] == 2  # smallest circuit: 2 nodes; the others keep their top 2 by |IE|
    # equalised sets: {0,1}, {0,3}, {3,4}
    assert s["jaccard"][0, 1] == pytest.approx(1 / 3)
    assert s["jaccard"][0, 2] == 0.0
    assert s["weighted_jaccard"][0, 1] == pytest.approx(0.6 / 1.4)  # p0 = (.6,.4,0), p1 = (.6,0,.4)
    u = [0, 1, 3]
    a, b = ie[0, u], ie[1, u]
    assert s["cosine"][0, 1] == pytest.approx(float(a @ b / (a.norm() * b.norm())))
    assert np.allclose(np.diag(s["jaccard"]), 1)


def test_shared_core_and_core_mass():
    ie = torch.tensor([[3.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    core = shared_core(ie, ie != 0)
    assert core["core"].tolist() == [True, False, False]
    assert core["core_mass"].tolist() == pytest.approx([0.75, 0.5])
    assert core["specific"].tolist() == [[False, True, False], [False, False, True]]




def test_bootstrap_resamples_within_category_and_is_seeded():
    rows = [np.arange(0, 5), np.arange(5, 12)]
    seen = []

    def summarise(sample):
        seen.append(sample)
        return {"x": np.array([s.mean() for s in sample])}
    a = bootstrap(rows, summarise, n_resamples=50, ci_level=0.9, seed=3)
    assert all(set(s[0]) <= set(rows[0]) and set(s[1]) <= set(rows[1]) and len(s[1]) == 7 for s in seen)
    b = bootstrap(rows, summarise, n_resamples=50, ci_level=0.9, seed=3)
    assert np.array_equal(a["x"]["low"], b["x"]["low"])
    assert (a["x"]["low"] <= a["x"]["high"]).all()


def test_fpr_check_can_fail():
    """The FPR bound has teeth: dropping the +1 of the p-value (p' = #{null >= obs} / N) with N = 9 rejects
    whenever no permutation reaches the observed statistic, ~10 % of exchangeable datasets."""
    rng = np.random.default_rng(4)
    broken = []
    for i in range(200):
        X, labels = synthetic(rng, planted=0.0)
        p = global_test(X, rng.permutation(labels), n_permutations=9, seed=i)["p_value"]
        broken.append(round(10 * p - 1) / 9 <= 0.05)  # p = (1 + k) / 10  ->  p' = k / 9
    assert np.mean(broken) > 0.06
