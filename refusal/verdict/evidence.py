"""The evidence of one analysed layer: effect sizes with percentile bootstrap CIs, from per-prompt refusal scores.

Notation: s̄_safe = mean baseline refusal score of the safe prompts (the safe floor); for category c, s̄_c(x) = mean
over c's held-out toxic prompts of score x. Every statistic below is computed on the data and on ``n_resamples``
resamples (prompts drawn with replacement within each category and within the safe prompts, all measurements of a
prompt kept together; refusal.verdict.resample), seeded; CIs are percentile intervals at ``ci_level``.

- **headroom** h_c = s̄_c(base) − s̄_safe. A category is *counted* when its headroom CI lies above 0 (the model
  refuses it measurably more than safe prompts) and it has at least ``min_prompts`` held-out prompts (fewer are
  *thin*: measured and listed, not counted); aggregates over categories use counted categories only.
- **residual refusal** under the shared ablation r_c = (s̄_c(shared) − s̄_safe) / h_c: 0 = the shared set removes
  all of c's refusal, 1 = none of it. **shared share** = 1 − r_c. The same for the random sets of the shared set's
  size (``random_residual``, random scores averaged over the sets first) and the paired **random gap**
  r_c(random) − r_c (> 0: the shared set removes more than random sets do).
- **induced fraction** = (mean induced score − s̄_safe) / mean_c h_c (counted c): how much refusal patching the
  shared set into safe prompts creates, relative to the toxic prompts' headroom. **safe KL**: mean over safe prompts.
- **drop matrix** D[A, B] = (s̄_B(base) − s̄_B(A's set ablated)) / h_B, rows = the category whose set is ablated.
- **dissociation** of a pair A ≠ B (both counted) = ((D[A,A] − D[A,B]) + (D[B,B] − D[B,A])) / 2: how much more
  each set removes of its own category's refusal than of the other's (double dissociation: high for both terms);
  its mean over pairs.
- **resolution**: the CI half-widths, i.e. the smallest distance from a threshold the data can resolve.

The result is a JSON-serialisable dict; a statistic the data leave undefined (NaN or infinite, e.g. a ratio whose
headroom is exactly 0) is None, and a statistic that was not measured is None.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from refusal.config import integer, number
from refusal.verdict.inputs import LayerScores, layer_scores
from refusal.verdict.power import resolution
from refusal.verdict.resample import intervals, point


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(np.isfinite(r), r, np.nan)


def _means(values: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """values [..., n], groups [B, n_g] each -> [..., G, B] group means."""
    return np.stack([values[..., g].mean(-1) for g in groups], axis=-2)


def _pairs(counted: np.ndarray) -> list[tuple[int, int]]:
    return list(combinations(np.flatnonzero(counted).tolist(), 2))


def _summaries(s: LayerScores, counted: np.ndarray, samples: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every statistic for B resamples: samples = per-category index arrays [B, n_c], then the safe ones [B, m]."""
    *tox, safe = samples
    floor = s.safe_base[safe].mean(-1)  # [B]
    head = _means(s.base, tox) - floor  # [C, B]
    out = {"safe_floor": floor, "headroom": head, "safe_kl": s.safe_kl[safe].mean(-1),
           "residual": _ratio(_means(s.shared, tox) - floor, head)}
    if counted.any():
        out["mean_residual"] = out["residual"][counted].mean(0)
    if s.random is not None:
        out["random_residual"] = _ratio(_means(s.random, tox) - floor, head)
        out["random_gap"] = out["random_residual"] - out["residual"]
    if s.induced is not None and counted.any():
        out["induced_fraction"] = _ratio(s.induced[safe].mean(-1) - floor, head[counted].mean(0))
    if s.per_category is not None:
        d = _ratio((head + floor)[None] - _means(s.per_category, tox), head[None])  # [A, B, resamples]
        out["drop_matrix"] = d
        pairs = _pairs(counted)
        if pairs:
            a, b = np.array(pairs).T
            index = ((d[a, a] - d[a, b]) + (d[b, b] - d[b, a])) / 2  # [P, resamples]
            out["dissociation_pairs"], out["dissociation_mean"] = index, index.mean(0)
    return out


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _triple(est, ci, name: str, idx=()) -> dict | None:
    """{"estimate", "low", "high"} of statistic ``name`` at index ``idx``; None when it was not computed."""
    if name not in est:
        return None
    return {"estimate": _num(est[name][idx]), "low": _num(ci[name]["low"][idx]),
            "high": _num(ci[name]["high"][idx])}


def _share(t: dict | None) -> dict | None:
    """1 − x of a triple (its CI flips)."""
    if t is None:
        return None
    flip = {"estimate": "estimate", "low": "high", "high": "low"}
    return {k: None if t[src] is None else 1.0 - t[src] for k, src in flip.items()}


def _category(s: LayerScores, est: dict, ci: dict, c: int, counted: np.ndarray, min_prompts: int) -> dict:
    r = _triple(est, ci, "residual", (c,))
    n = int((s.labels == c).sum())
    return {"category": s.categories[c], "n": n, "counted": bool(counted[c]), "thin": n < min_prompts,
            "headroom": _triple(est, ci, "headroom", (c,)), "residual": r, "shared_share": _share(r),
            "random_residual": _triple(est, ci, "random_residual", (c,)),
            "random_gap": _triple(est, ci, "random_gap", (c,))}


def _matrix(est: dict, ci: dict, cats: list[str]) -> dict | None:
    if "drop_matrix" not in est:
        return None
    table = {"estimate": est["drop_matrix"], "low": ci["drop_matrix"]["low"], "high": ci["drop_matrix"]["high"]}
    return {"rows": cats, "columns": cats,
            **{k: [[_num(x) for x in row] for row in v] for k, v in table.items()}}


def _dissociation(est: dict, ci: dict, s: LayerScores, counted: np.ndarray) -> dict | None:
    if "dissociation_mean" not in est:
        return None
    pairs = [{"a": s.categories[a], "b": s.categories[b], **_triple(est, ci, "dissociation_pairs", (i,))}
             for i, (a, b) in enumerate(_pairs(counted))]
    return {"pairs": pairs, "mean": _triple(est, ci, "dissociation_mean")}


def layer_evidence(base, labels, safe_base, shared, safe_kl, *, per_category=None, random=None, induced=None,
                   categories=None, n_resamples: int = 2000, ci_level: float = 0.95, seed: int = 0,
                   min_prompts: int = 2) -> dict:
    """The evidence dict of one layer from its per-prompt refusal scores (arguments: refusal.verdict.inputs).

    Two bootstrap passes with the same seed (so the same resamples): the first decides which categories are
    counted (headroom CI above 0 and >= ``min_prompts`` prompts), the second computes every statistic with aggregates
    over those."""
    n_resamples = integer("verdict.n_resamples", n_resamples, 100)
    ci_level = number("verdict.ci_level", ci_level, 0, 1, open_lo=True, open_hi=True)
    seed = integer("verdict.seed", seed)
    min_prompts = integer("verdict.min_prompts", min_prompts, 2)
    s = layer_scores(base, labels, safe_base, shared, safe_kl, per_category=per_category, random=random,
                     induced=induced, categories=categories)
    groups = s.groups()
    nothing = np.zeros(len(s.categories), dtype=bool)
    head_ci = intervals(groups, lambda g: {"headroom": _summaries(s, nothing, g)["headroom"]}, n_resamples,
                        ci_level, seed)["headroom"]
    counted = (head_ci["low"] > 0) & (np.bincount(s.labels, minlength=len(s.categories)) >= min_prompts)
    summarise = lambda g: _summaries(s, counted, g)  # noqa: E731
    est, ci = point(groups, summarise), intervals(groups, summarise, n_resamples, ci_level, seed)
    per_cat = [_category(s, est, ci, c, counted, min_prompts) for c in range(len(s.categories))]
    mean_r = _triple(est, ci, "mean_residual")
    out = {"categories": list(s.categories), "counted": [s.categories[c] for c in np.flatnonzero(counted)],
           "n_prompts": {"toxic": {p["category"]: p["n"] for p in per_cat}, "safe": len(s.safe_base)},
           "n_random_sets": s.n_random, "safe_floor": _triple(est, ci, "safe_floor"), "per_category": per_cat,
           "mean_residual": mean_r, "mean_shared_share": _share(mean_r),
           "induced_fraction": _triple(est, ci, "induced_fraction"), "safe_kl": _triple(est, ci, "safe_kl"),
           "drop_matrix": _matrix(est, ci, list(s.categories)),
           "dissociation": _dissociation(est, ci, s, counted),
           "min_prompts": min_prompts,
           "bootstrap": {"method": "percentile", "n_resamples": n_resamples, "ci_level": ci_level, "seed": seed}}
    out["resolution"] = resolution(out)
    return out
