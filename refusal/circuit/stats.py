"""Statistics on per-prompt attributions that can reject (DESIGN §3 Comparison and statistics).

Statistic: between-category dissimilarity D = 1 − mean over category pairs of cos(mean IE of A, mean IE of B),
over the feature nodes. It only needs inner products of category means, so it is computed from the prompts' Gram
matrix G = X Xᵀ: a permutation costs O(n_prompts²) and no model pass.

- Global test: permute the category labels among the toxic prompts (scipy.stats.permutation_test,
  ``independent``: group sizes kept), p = (1 + #{D_null ≥ D_obs}) / (1 + N) (exact enumeration when there are
  fewer distinct relabelings than N).
- Pairwise tests: the same with only two categories' prompts; Benjamini–Hochberg across pairs
  (scipy.stats.false_discovery_control).
- Bootstrap: resample prompts with replacement within each category, rediscover each category circuit (mean IE,
  same selection rules), recompute the similarity matrices and core mass; percentile CIs.
"""
from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import torch
from scipy.stats import false_discovery_control, permutation_test

EPS = 1e-30


def _cos_dissimilarity(G: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """1 − mean pairwise cosine of group means; groups: index arrays [..., n_c] -> [...]."""
    batch = groups[0].shape[:-1]
    C, n = len(groups), G.shape[0]
    W = np.zeros((*batch, C, n))
    for c, idx in enumerate(groups):
        np.put_along_axis(W[..., c, :], idx, 1.0 / idx.shape[-1], axis=-1)
    ip = W @ G @ np.swapaxes(W, -1, -2)  # [..., C, C] inner products of group means
    d = np.sqrt(np.clip(np.diagonal(ip, axis1=-2, axis2=-1), EPS, None))
    cos = ip / (d[..., :, None] * d[..., None, :])
    iu = np.triu_indices(C, 1)
    return 1.0 - cos[..., iu[0], iu[1]].mean(-1)


def dissimilarity_test(G: np.ndarray, labels: np.ndarray, n_permutations: int, rng: np.random.Generator) -> dict:
    """Permutation test of D over the prompts in ``labels`` (ints; one group per distinct value)."""
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    res = permutation_test(groups, lambda *g, axis=-1: _cos_dissimilarity(G, [np.asarray(x, dtype=np.int64) for x in g]),
                           permutation_type="independent", vectorized=True, n_resamples=n_permutations,
                           alternative="greater", random_state=rng, batch=256)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue),
            "null_mean": float(np.mean(res.null_distribution)), "n_null": int(len(res.null_distribution))}


def gram(X: torch.Tensor) -> np.ndarray:
    x = X.double().numpy()
    return x @ x.T


def global_test(X: torch.Tensor, labels: np.ndarray, n_permutations: int, seed: int) -> dict:
    return dissimilarity_test(gram(X), labels, n_permutations, np.random.default_rng(seed))


def pairwise_tests(X: torch.Tensor, labels: np.ndarray, categories: list[str], n_permutations: int, seed: int,
                   alpha: float) -> list[dict]:
    """One permutation test per category pair (only their prompts), BH-adjusted p-values across pairs."""
    G = gram(X)
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in itertools.combinations(range(len(categories)), 2):
        idx = np.flatnonzero((labels == a) | (labels == b))
        r = dissimilarity_test(G[np.ix_(idx, idx)], labels[idx], n_permutations, rng)
        rows.append({"a": categories[a], "b": categories[b], "statistic": r["statistic"], "p_value": r["p_value"]})
    if rows:
        adj = false_discovery_control([r["p_value"] for r in rows], method="bh")
        for r, p in zip(rows, np.atleast_1d(adj)):
            r["p_adjusted"] = float(p)
            r["differs"] = bool(p <= alpha)
    return rows


def bootstrap(rows_by_cat: list[np.ndarray], summarise: Callable[[list[np.ndarray]], dict[str, np.ndarray]],
              n_resamples: int, ci_level: float, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Percentile CIs of every array ``summarise`` returns, prompts resampled within each category."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    for _ in range(n_resamples):
        sample = [rows[rng.integers(0, len(rows), len(rows))] for rows in rows_by_cat]
        for k, v in summarise(sample).items():
            draws.setdefault(k, []).append(np.asarray(v, dtype=float))
    lo, hi = 100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2
    out = {}
    for k, v in draws.items():
        arr = np.stack(v)
        out[k] = {"low": np.nanpercentile(arr, lo, axis=0), "high": np.nanpercentile(arr, hi, axis=0)}
    return out
