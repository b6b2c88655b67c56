"""The cross-category transfer matrix: ablate category A's circuit, measure refusal on held-out prompts of every
category B (and on the safe and hard prompts); its statistic and tests. The rule that reads the statistic is
refusal.circuit.verdict.TransferRule (descriptive evidence: the verdict is the bottleneck stage's, DESIGN.md §4).

Rows: each toxic category with a circuit (plus the combined ``all`` circuit as a reference row, not used by the
statistic). With ``size`` set, every row has the same size (DESIGN.md §4): a category's row is the top-``size``
feature nodes of each hook by |mean IE| over that category's discovery prompts (the bottleneck stage's ranking,
refusal/evaluation/bottleneck_sets.py); with ``size: null`` a row is the category's discovered circuit, whose size
depends on its threshold. Columns: each of those categories' toxic prompts of the evaluation split, then ``safe`` and
``hard`` (pooled over categories). Ablating a row sets its nodes to the ablation values at the node positions
(refusal.evaluation.nodes); by default only its feature nodes (``include_error_nodes: false``): the error node of a
hook is the same node in every category's circuit, so ablating it would make every row alike for reasons unrelated
to which features a category uses.

Per cell: the mean refusal-score drop (baseline − ablated, per prompt, paired), the share of the column's refusal it
removes (score drop ÷ the column's headroom h_B = mean baseline score of B − mean baseline score of the safe prompts;
toxic columns only), the ablated refusal rate of the generated responses (judge: evaluation.judge) and their
bootstrap CIs; the same score drop for ``n_random`` random circuits with the same number of feature nodes per hook
(refusal score only: a forward pass each): the floor.

Counted categories: only categories the model refuses enter the statistic: headroom CI above 0 (prompts of the
category and the safe prompts resampled). The others are listed, not counted.

Statistic, on headroom-normalised drops (when the split has >= 2 safe prompts; raw score drops otherwise, said so).
d[A, i] = refusal-score drop on held-out toxic prompt i with category A's row ablated, for every counted category A
and every toxic prompt i of those categories; M[A, B] = mean of d[A, i] over B's prompts ÷ h_B: the share of B's
refusal that ablating A's row removes.

- **Specificity** S = mean_A M[A, A] − mean_{A≠B} M[A, B]: how much more ablating a category's row lowers
  refusal on its own category than on the others. Block-diagonal (modular) → S large; uniform (monolithic) → S ≈ 0.
- **Transfer ratio** ρ = mean_{A≠B} M[A, B] / mean_A M[A, A]: the fraction of the own-category share that carries
  over to other categories (≈ 0 modular, ≈ 1 monolithic).
  Unnormalised, S is unchanged by a row effect and by a column effect; normalised, column effects are divided out
  before it is computed. ρ is descriptive.
- **Beats random**: mean_A M[A, A] − mean_A R[A, A], R from random circuits of the same size per hook; if the
  rows do not lower refusal more than random feature sets, the matrix says nothing about mechanisms.

Tests: permutation p-value of S (prompts' category labels permuted, group sizes kept, the headroom of each permuted
group recomputed, N random relabelings, p = (1 + #{S_null ≥ S_obs}) / (1 + N); written here because
scipy.stats.permutation_test refuses groups of one prompt, which small held-out splits have); percentile bootstrap
CIs of S, ρ and beats-random (prompts resampled within each category and among the safe prompts;
refusal.circuit.stats.bootstrap). The same statistics are reported for the generated refusal rate (drop =
refused_base − refused_ablated, normalised by the rate's headroom), the decision uses the score.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch

from refusal.behavior.rates import cell_rng
from refusal.behavior.score import refusal_score
from refusal.circuit.circuit import COMBINED
from refusal.circuit.plots import matrix_plot
from refusal.circuit.stats import bootstrap
from refusal.circuit.verdict import TransferRule
from refusal.errors import ConfigError
from refusal.evaluation.bottleneck_sets import n_features, ranking, set_size, top_k
from refusal.evaluation.nodes import features_only, random_matched, seeded_generator
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer

SAFE_COLUMNS = ("safe", "hard")
PLOTS = (("score_drop", "refusal-score drop (baseline − ablated)"),
         ("score_drop_share", "share of the column's refusal removed (score drop ÷ headroom)"),
         ("random_score_drop", "score drop, random circuits of the same size"),
         ("refusal_rate", "refusal rate with the circuit ablated"))


@dataclass(frozen=True)
class TransferSettings:
    """``evaluation.transfer`` (values: conf/evaluation/default.yaml, checked in refusal/evaluation/config.py)."""
    generate: bool
    include_error_nodes: bool
    n_random: int
    n_permutations: int
    rule: TransferRule
    size: int | float | None = None  # feature nodes per hook of every row (int, or a fraction); None: the circuits


# ----------------------------------------------------------------------------------------------- the statistic
def cell_means(d: np.ndarray, groups) -> np.ndarray:
    """d [R, n], groups: index arrays [..., n_g] -> [..., R, G] means of d over each group."""
    means = [d[:, np.asarray(g, dtype=np.int64)].mean(-1) for g in groups]  # each [R, ...]
    return np.moveaxis(np.stack(means, -1), 0, -2)


def _diag_off(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    C = M.shape[-1]
    diag = np.trace(M, axis1=-2, axis2=-1) / C
    off = (M.sum((-2, -1)) - diag * C) / (C * (C - 1))
    return diag, off


def headroom(base: np.ndarray, groups, safe) -> np.ndarray:
    """[..., G] mean of ``base`` over each group minus its mean over ``safe`` (index arrays, optionally batched)."""
    return cell_means(base[None, :], groups)[..., 0, :] - base[safe].mean(-1)[..., None]


def shares(d: np.ndarray, groups, base: np.ndarray | None = None, safe=None) -> np.ndarray:
    """[..., R, G] cell means of d, each column divided by its group's headroom when ``base`` is given."""
    M = cell_means(d, groups)
    return M if base is None else M / headroom(base, groups, safe)[..., None, :]


def specificity(d: np.ndarray, groups, base: np.ndarray | None = None, safe=None) -> np.ndarray:
    diag, off = _diag_off(shares(d, groups, base, safe))
    return diag - off


def permutation_null(d: np.ndarray, groups: list[np.ndarray], n: int, rng: np.random.Generator,
                     base: np.ndarray | None = None, safe=None, batch: int = 256) -> np.ndarray:
    """[n] specificity with the prompts' group labels randomly permuted (group sizes kept; each permuted group's
    headroom recomputed when ``base`` is given; the safe prompts are not permuted)."""
    pool = np.concatenate(groups)
    cuts = np.cumsum([len(g) for g in groups])[:-1]
    out = []
    for start in range(0, n, batch):
        perm = rng.permuted(np.broadcast_to(pool, (min(batch, n - start), len(pool))), axis=1)
        out.append(specificity(d, np.split(perm, cuts, axis=1), base, safe))
    return np.concatenate(out)


def _summaries(d: np.ndarray, d_random: np.ndarray | None, groups, base=None, safe=None) -> dict[str, np.ndarray]:
    diag, off = _diag_off(shares(d, groups, base, safe))
    out = {"specificity": diag - off, "mean_diagonal": diag, "mean_offdiagonal": off,
           "transfer_ratio": np.where(diag != 0, off / np.where(diag != 0, diag, 1.0), np.nan)}
    if d_random is not None:
        r_diag, _ = _diag_off(shares(d_random, groups, base, safe))
        out["random_mean_diagonal"] = r_diag
        out["beats_random"] = diag - r_diag
    return out


def transfer_statistics(d: np.ndarray, labels: np.ndarray, d_random: np.ndarray | None, n_permutations: int,
                        n_resamples: int, ci_level: float, seed: int, base: np.ndarray | None = None) -> dict:
    """Statistics, permutation p-value and bootstrap CIs. d [C, n]: drops on n prompts; ``labels[i]`` = row of d
    that is prompt i's category, -1 for a safe prompt (only used with ``base``). ``base`` [n]: the prompts'
    baseline scores: each column is then divided by its headroom over the safe prompts (``normalised``)."""
    C = d.shape[0]
    groups = [np.flatnonzero(labels == c) for c in range(C)]
    safe = np.flatnonzero(labels == -1)
    if C < 2 or any(len(g) == 0 for g in groups):
        raise ConfigError(f"the transfer statistic needs >= 2 categories with circuits and held-out toxic prompts "
                          f"(got {C} with prompt counts {[len(g) for g in groups]})")
    if base is not None and len(safe) < 2:
        raise ConfigError(f"the headroom-normalised transfer statistic needs >= 2 safe prompts (got {len(safe)})")
    safe_arg = safe if base is not None else None

    def resampled(sample):
        return _summaries(d, d_random, sample[:C], base, sample[C] if base is not None else None)

    # a ratio with a zero denominator (a diagonal, or a headroom of a permuted or resampled group) is inf/NaN there:
    # quietly; the rule reads a NaN estimate as inconclusive and NaN draws are left out of the percentiles
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        obs = {k: float(v) for k, v in _summaries(d, d_random, groups, base, safe_arg).items()}
        null = permutation_null(d, groups, n_permutations, np.random.default_rng(seed), base, safe_arg)
        p_value = (1 + int(np.sum(null >= obs["specificity"] - 1e-12 * abs(obs["specificity"])))) / (1 + len(null))
        ci = (bootstrap(groups + ([safe] if base is not None else []), resampled, n_resamples, ci_level, seed + 1)
              if n_resamples else {})
    return {**obs, "p_value": float(p_value), "n_permutations": n_permutations, "null_mean": float(np.mean(null)),
            "ci": {k: {"level": ci_level, "low": float(v["low"]), "high": float(v["high"])} for k, v in ci.items()},
            "n_prompts": [len(g) for g in groups], "normalised": base is not None,
            **({"n_safe": len(safe)} if base is not None else {})}


# ----------------------------------------------------------------------------------------------- the matrix
@dataclass
class _Layout:
    categories: list[str]  # toxic categories with a circuit and held-out prompts: the statistic's rows
    no_prompts: list[str]  # categories with a circuit but no held-out toxic prompt
    rows: list[str]  # the circuits ablated: the categories, then the combined circuit if there is one
    columns: list[str]  # the prompt groups measured: the categories, then safe and hard
    records: list  # every measured prompt, column by column
    col_index: np.ndarray  # [n records] the column of each record


@dataclass
class _Measured:
    base: np.ndarray  # [n records] refusal score without intervention
    base_refused: np.ndarray | None  # [n records] refused without intervention (generate only)
    drops: dict  # row -> [n records] score drop with the row's circuit ablated
    rand_drops: dict  # row -> [n records] mean score drop over the random circuits, or None
    refused: dict  # row -> [n records] refused with the row's circuit ablated (generate only)
    sizes: dict  # row -> nodes ablated
    notes: list  # what the reader should know about the rows


def _layout(prompts, masks: dict) -> _Layout:
    toxic = prompts.filter(label="toxic")
    categories = sorted(c for c in masks if c != COMBINED and len(toxic.filter(category=c)))
    no_prompts = sorted(c for c in masks if c != COMBINED and c not in categories)
    cols = {c: list(toxic.filter(category=c)) for c in categories}
    for label in SAFE_COLUMNS:
        recs = list(prompts.filter(label=label))
        if recs:
            cols[label] = recs
    names = list(cols)
    return _Layout(categories, no_prompts, categories + ([COMBINED] if COMBINED in masks else []), names,
                   [r for c in names for r in cols[c]],
                   np.concatenate([np.full(len(cols[c]), j) for j, c in enumerate(names)]))


def row_masks(setup, inputs, rows: list[str], s: TransferSettings, notes: list[str] | None = None) -> dict:
    """Each row's node mask: its circuit (feature nodes only unless ``include_error_nodes``), or with ``size`` the
    top-k feature nodes of every hook by |mean IE| over the row's discovery prompts (k = ``size``, an int capped at
    the hook's features or a fraction of them), so every row has the same size. A row with fewer than k nodes of
    |IE| > 0 (ties at 0 filled lowest index first) gets a line in ``notes``."""
    out = {}
    for row in rows:
        if s.size is None:
            out[row] = setup.masks[row] if s.include_error_nodes else features_only(setup.space, setup.masks[row])
            continue
        found = ranking(inputs, setup.space, row)
        if found is None:
            raise ConfigError(f"evaluation.transfer.size={s.size}: the discover run has neither attributions nor a "
                              f"circuit for {row!r}; use evaluation.transfer.size=null (the circuits as discovered)")
        space = setup.space
        mask = torch.zeros(space.n_nodes, dtype=torch.bool)
        for h in range(len(space.hooks)):
            mask |= top_k(space, found[0], h, set_size(s.size, n_features(space, h)))
        out[row] = mask
        nonzero = int((found[0][mask] != 0).sum())
        if notes is not None and nonzero < int(mask.sum()):
            notes.append(f"row {row}: only {nonzero} of its {int(mask.sum())} nodes have |IE| > 0 (the rest are ties "
                         f"at 0, lowest index first)")
    return out


def _measure(ctx, setup, inputs, s: TransferSettings, lay: _Layout) -> _Measured:
    """Scores (and generations) with each row's circuit ablated, and with its random circuits."""
    records = lay.records
    base_refused = np.array([ctx.baseline_items[r.id]["refused"] for r in records], dtype=float) if s.generate else None
    start = first_layer(setup.space.hooks, ctx.loaded.n_layers)
    logits = PrefixCachedLogits(ctx.model, ctx.formatter, [r.prompt for r in records], ctx.batch_size, start,
                                setup.space.n_positions)

    def scores() -> np.ndarray:
        return refusal_score(logits(), ctx.refusal_token_ids).numpy()

    base = scores()  # no intervention: the reference of every drop, through the same forward as the ablated runs
    out = _Measured(base, base_refused, {}, {}, {}, {}, [])
    masks = row_masks(setup, inputs, lay.rows, s, out.notes)
    for row in lay.rows:
        mask = masks[row]
        out.sizes[row] = int(mask.sum())
        with setup.ablator.ablated(ctx.model, mask):
            out.drops[row] = base - scores()
            if s.generate:
                items = ctx.generate(records, name=f"transfer_{row}")
                out.refused[row] = np.array([it["refused"] for it in items], dtype=float)
        acc = np.zeros(len(records))
        for k in range(s.n_random):
            rmask = random_matched(setup.space, mask, seeded_generator(ctx.seed, "transfer", row, k))
            with setup.ablator.ablated(ctx.model, rmask):
                acc += base - scores()
        out.rand_drops[row] = acc / s.n_random if s.n_random else None
    return out


def _ci_fields(key: str, low_high) -> dict:
    return dict(zip((f"{key}_ci_low", f"{key}_ci_high"), low_high))


def share_interval(drop: np.ndarray, base: np.ndarray, safe_base: np.ndarray, n_resamples: int, ci_level: float,
                   seed: int) -> tuple[float, float, float]:
    """(share, CI low, CI high): mean drop ÷ (mean base − mean safe base); a column's prompts (drop and base paired)
    and the safe prompts resampled independently (percentile)."""
    def share(sample):
        col, safe = sample
        return {"share": drop[col].mean() / (base[col].mean() - safe_base[safe].mean())}

    groups = [np.arange(len(drop)), np.arange(len(safe_base))]
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        est = float(share(groups)["share"])
        ci = bootstrap(groups, share, n_resamples, ci_level, seed)["share"]
    return est, float(ci["low"]), float(ci["high"])


def _cell(ctx, m: _Measured, row: str, col: str, idx: np.ndarray, generate: bool, safe: np.ndarray | None) -> dict:
    d = m.drops[row][idx]
    cell = {"circuit": row, "prompts": col, "n": int(idx.sum()), "n_nodes": m.sizes[row],
            "baseline_score": float(m.base[idx].mean()), "score_drop": float(d.mean()),
            **_ci_fields("score_drop", ctx.mean_ci(d, "transfer", row, col))}
    if safe is not None and col not in SAFE_COLUMNS:
        seed = int(cell_rng(ctx.seed, "transfer-share", row, col).integers(2**32))
        est, low, high = share_interval(d, m.base[idx], m.base[safe], ctx.boot.n_resamples, ctx.boot.ci_level, seed)
        cell.update({"score_drop_share": est, "score_drop_share_ci_low": low, "score_drop_share_ci_high": high})
    if m.rand_drops[row] is not None:
        rd = m.rand_drops[row][idx]
        cell.update({"random_score_drop": float(rd.mean()),
                     **_ci_fields("random_score_drop", ctx.mean_ci(rd, "transfer-random", row, col))})
    if generate:
        out = m.refused[row][idx]
        cell.update({"baseline_refusal_rate": float(m.base_refused[idx].mean()), "refusal_rate": float(out.mean()),
                     **_ci_fields("refusal_rate", ctx.rate_ci(out.astype(bool), "transfer", row, col)),
                     "rate_drop": float((m.base_refused[idx] - out).mean())})
    return cell


def _matrices(cells: list[dict], rows: list[str], columns: list[str]) -> dict[str, list]:
    if not cells:
        return {}
    by = {(c["circuit"], c["prompts"]): c for c in cells}
    return {k: [[by[(r, c)].get(k) for c in columns] for r in rows]
            for k in ("score_drop", "score_drop_share", "random_score_drop", "refusal_rate", "rate_drop")
            if any(k in c for c in cells)}


def _plots(matrices: dict, rows: list[str], columns: list[str], plot_dir: Path) -> dict[str, str]:
    plots = {}
    for key, title in PLOTS:
        if key in matrices:
            keep = [j for j, c in enumerate(columns) if any(m[j] is not None for m in matrices[key])]
            m = np.array([[r[j] for j in keep] for r in matrices[key]], dtype=float)
            plots[key] = str(matrix_plot(m, rows, [columns[j] for j in keep], title,
                                         Path(plot_dir) / f"transfer_{key}.png",
                                         cmap="RdBu_r" if key != "refusal_rate" else "viridis",
                                         symmetric=key != "refusal_rate", xlabel="held-out prompts",
                                         ylabel="circuit ablated"))
    return plots


def counted_categories(categories: list[str], base: np.ndarray, groups: list[np.ndarray], safe: np.ndarray,
                       n_resamples: int, ci_level: float, seed: int) -> dict[str, dict]:
    """Per category: its headroom (mean baseline score − the safe prompts') with a percentile CI (its prompts and
    the safe prompts resampled), and whether it is counted (CI low above 0: the model refuses it)."""
    ci = bootstrap([*groups, safe], lambda g: {"h": headroom(base, g[:-1], g[-1])}, n_resamples, ci_level, seed)["h"]
    est = headroom(base, groups, safe)
    return {c: {"headroom": float(est[i]), "ci_low": float(ci["low"][i]), "ci_high": float(ci["high"][i]),
                "counted": bool(ci["low"][i] > 0)} for i, c in enumerate(categories)}


def column_records(lay: _Layout, name: str) -> np.ndarray:
    """Indices into ``lay.records`` of the column ``name`` (empty when the split has no such column)."""
    return np.flatnonzero(lay.col_index == lay.columns.index(name)) if name in lay.columns else np.array([], int)


def _decide(ctx, s: TransferSettings, lay: _Layout, m: _Measured, safe_idx: np.ndarray) -> dict:
    """Counted categories, the statistic on their headroom-normalised score drops (and rate drops) and the transfer
    rule's verdict; ``safe_idx``: the safe prompts' records (normalised when >= 2)."""
    b = ctx.boot
    normalised = len(safe_idx) >= 2
    tox_of = {c: column_records(lay, c) for c in lay.categories}
    headrooms = (counted_categories(lay.categories, m.base, [tox_of[c] for c in lay.categories], safe_idx,
                                    b.n_resamples, b.ci_level, ctx.seed + 3) if normalised else {})
    categories = [c for c in lay.categories if not normalised or headrooms[c]["counted"]]
    out = {"normalised": normalised, "headroom": headrooms, "counted": categories,
           "not_counted": [c for c in lay.categories if c not in categories], "notes": list(m.notes)}
    if not normalised:
        out["notes"].append(f"{len(safe_idx)} safe prompts in the split: the drops are not normalised by headroom and "
                            "every category with prompts counts")
    if len(categories) < 2:
        return {**out, "decision": {"verdict": "inconclusive", "rule": "needs >= 2 counted categories (headroom CI "
                                    f"above 0) with circuits and held-out toxic prompts; have {categories}",
                                    "evidence": {}}}
    cols = np.concatenate([tox_of[c] for c in categories] + ([safe_idx] if normalised else []))
    labels = np.concatenate([np.full(len(tox_of[c]), i) for i, c in enumerate(categories)] +
                            ([np.full(len(safe_idx), -1)] if normalised else []))
    d = np.stack([m.drops[c][cols] for c in categories])
    d_rand = np.stack([m.rand_drops[c][cols] for c in categories]) if s.n_random else None
    stats = transfer_statistics(d, labels, d_rand, s.n_permutations, b.n_resamples, b.ci_level, ctx.seed,
                                base=m.base[cols] if normalised else None)
    what = "share of refusal removed (score drop ÷ headroom)" if normalised else "score drop"
    out.update({"statistic": {"name": f"specificity S = mean own-category {what} − mean other-category {what}",
                              **stats},
                "decision": s.rule.decide(stats)})
    if s.generate:
        d_rate = np.stack([m.base_refused[cols] - m.refused[c][cols] for c in categories])
        out["statistic_rate"] = transfer_statistics(d_rate, labels, None, s.n_permutations, b.n_resamples,
                                                    b.ci_level, ctx.seed + 7,
                                                    base=m.base_refused[cols] if normalised else None)
    return out


def run_transfer(ctx, setup, inputs, s: TransferSettings, plot_dir: Path) -> dict:
    lay = _layout(ctx.prompts, setup.masks)
    m = _measure(ctx, setup, inputs, s, lay)
    safe_idx = column_records(lay, "safe")
    safe = safe_idx if len(safe_idx) >= 2 else None  # the shares' denominator needs a safe mean with a spread
    cells = [_cell(ctx, m, row, col, lay.col_index == j, s.generate, safe)
             for row in lay.rows for j, col in enumerate(lay.columns)]
    matrices = _matrices(cells, lay.rows, lay.columns)
    return {"rows": lay.rows, "columns": lay.columns, "cells": cells, "n_nodes": m.sizes, "generate": s.generate,
            "include_error_nodes": s.include_error_nodes, "n_random": s.n_random,
            "size": s.size, "categories_without_prompts": lay.no_prompts, "matrices": matrices,
            "plots": _plots(matrices, lay.rows, lay.columns, plot_dir), **_decide(ctx, s, lay, m, safe_idx)}
