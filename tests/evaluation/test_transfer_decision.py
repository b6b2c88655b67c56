"""The transfer-matrix statistic and rule on synthetic per-prompt drops: block-diagonal evidence is modular with a
small p-value, uniform evidence is monolithic, circuits no better than random ones are inconclusive."""
import numpy as np
import pytest

from refusal.errors import ConfigError
from refusal.circuit.verdict import TransferRule
from refusal.evaluation.transfer import cell_means, specificity, transfer_statistics

C, N = 4, 8  # categories, prompts per category


def _labels():
    return np.repeat(np.arange(C), N)


def _drops(own: float, other: float, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    labels = _labels()
    d = np.where(np.arange(C)[:, None] == labels[None, :], own, other)
    return d + np.random.default_rng(seed).normal(0, noise, d.shape)


def _stats(d, d_random=None):
    return transfer_statistics(d, _labels(), d_random, n_permutations=500, n_resamples=200, ci_level=0.95, seed=0)


def test_cell_means_vectorized_matches_a_loop():
    d = np.random.default_rng(1).normal(size=(C, C * N))
    groups = [np.flatnonzero(_labels() == c) for c in range(C)]
    M = cell_means(d, groups)
    for a in range(C):
        for b in range(C):
            assert M[a, b] == pytest.approx(d[a, groups[b]].mean())
    batched = cell_means(d, [np.stack([g, g[::-1]]) for g in groups])  # leading batch dim
    assert batched.shape == (2, C, C) and np.allclose(batched[0], M)
    assert specificity(d, groups) == pytest.approx(np.trace(M) / C - (M.sum() - np.trace(M)) / (C * (C - 1)))


def test_block_diagonal_is_modular():
    st = _stats(_drops(2.0, 0.0), d_random=_drops(0.0, 0.0, seed=1))
    assert st["specificity"] == pytest.approx(2.0, abs=0.1) and st["p_value"] < 0.01
    assert abs(st["transfer_ratio"]) < 0.1 and st["ci"]["beats_random"]["low"] > 0
    assert st["ci"]["specificity"]["low"] > 1.5
    assert TransferRule().decide(st)["verdict"] == "modular"


def test_uniform_is_monolithic():
    st = _stats(_drops(2.0, 2.0), d_random=_drops(0.0, 0.0, seed=1))
    assert abs(st["specificity"]) < 0.2 and st["p_value"] > 0.05 and st["transfer_ratio"] > 0.9
    assert TransferRule().decide(st)["verdict"] == "monolithic"


def test_partial_transfer_is_mixed_and_random_like_is_inconclusive():
    st = _stats(_drops(2.0, 1.3), d_random=_drops(0.0, 0.0, seed=1))
    assert st["p_value"] < 0.05 and 0.5 < st["transfer_ratio"] < 0.8
    assert TransferRule().decide(st)["verdict"] == "mixed"
    as_random = _stats(_drops(2.0, 0.0), d_random=_drops(2.0, 0.0, seed=1))
    assert TransferRule().decide(as_random)["verdict"] == "inconclusive"
    no_effect = _stats(_drops(-0.5, 0.0))
    assert TransferRule().decide(no_effect)["verdict"] == "inconclusive"


def test_statistic_is_seeded():
    d = _drops(1.0, 0.3)
    assert _stats(d) == _stats(d)


def test_needs_two_categories_with_prompts():
    with pytest.raises(ConfigError, match="2 categories"):
        transfer_statistics(np.ones((1, 3)), np.zeros(3, dtype=int), None, 10, 10, 0.95, 0)


def test_specificity_ignores_row_and_column_effects():
    """S measures the circuit x category interaction only: adding a per-circuit or per-category constant to the
    drops leaves it unchanged."""
    d = _drops(1.0, 0.2)
    groups = [np.flatnonzero(_labels() == c) for c in range(C)]
    row = np.arange(C)[:, None] * 0.7
    col = np.repeat(np.array([0.0, 2.0, -1.0, 0.5]), N)[None, :]
    assert specificity(d + row + col, groups) == pytest.approx(specificity(d, groups))
