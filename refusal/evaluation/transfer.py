"""The cross-category transfer matrix: ablate category A's circuit, measure refusal on held-out prompts of every
category B (and on the safe and hard prompts); its statistic and tests. The rule that reads the statistic is
refusal.circuit.verdict.TransferRule.

Rows: each toxic category with a circuit (plus the combined ``all`` circuit as a reference row, not used by the
statistic). Columns: each of those categories' toxic prompts of the evaluation split, then ``safe`` and ``hard``
(pooled over categories). Ablating a circuit sets its nodes to the ablation values at the node positions
(refusal.evaluation.nodes); by default only its feature nodes (``include_error_nodes: false``): the error node of a
hook is the same node in every category's circuit, so ablating it would make every row alike for reasons unrelated
to which features a category uses.

Per cell: the mean refusal-score drop (baseline − ablated, per prompt, paired), the ablated refusal rate of the
generated responses (judge: evaluation.judge) and their bootstrap CIs; the same score drop for ``n_random`` random
circuits with the same number of feature nodes per hook (refusal score only: a forward pass each).

Statistic. d[A, i] = refusal-score drop on held-out toxic prompt i (baseline score − score with category A's circuit
ablated), for every category A with a circuit and every toxic prompt i of those categories; M[A, B] = mean of
d[A, i] over B's prompts.

- **Specificity** S = mean_A M[A, A] − mean_{A≠B} M[A, B]: how much more ablating a category's circuit lowers
  refusal on its own category than on the others. Block-diagonal (modular) → S large; uniform (monolithic) → S ≈ 0.
- **Transfer ratio** ρ = mean_{A≠B} M[A, B] / mean_A M[A, A]: the fraction of the own-category drop that carries
  over to other categories (≈ 0 modular, ≈ 1 monolithic).
  S is unchanged by a row effect (a circuit that lowers refusal everywhere by the same amount, e.g. a larger one)
  and by a column effect (a category whose prompts react more to any ablation): it measures only the
  circuit × category interaction. ρ is descriptive and is not.
- **Beats random**: mean_A M[A, A] − mean_A R[A, A], R from random circuits of the same size per hook; if the
  circuits do not lower refusal more than random feature sets, the matrix says nothing about mechanisms.

Tests: permutation p-value of S (prompts' category labels permuted, group sizes kept, N random relabelings,
p = (1 + #{S_null ≥ S_obs}) / (1 + N); written here because scipy.stats.permutation_test refuses groups of one
prompt, which small held-out splits have); percentile bootstrap CIs of S, ρ and beats-random (prompts resampled
within each category; refusal.circuit.stats.bootstrap). The same statistics are reported for the generated
refusal rate (drop = refused_base − refused_ablated), the decision uses the score.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refusal.behavior.score import refusal_score
from refusal.circuit.circuit import COMBINED
from refusal.circuit.plots import matrix_plot
from refusal.circuit.stats import bootstrap
from refusal.circuit.verdict import TransferRule
from refusal.errors import ConfigError
from refusal.evaluation.nodes import features_only, random_matched, seeded_generator
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer

SAFE_COLUMNS = ("safe", "hard")
PLOTS = (("score_drop", "refusal-score drop (baseline − ablated)"),
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


def specificity(d: np.ndarray, groups) -> np.ndarray:
    diag, off = _diag_off(cell_means(d, groups))
    return diag - off


def permutation_null(d: np.ndarray, groups: list[np.ndarray], n: int, rng: np.random.Generator,
                     batch: int = 256) -> np.ndarray:
    """[n] specificity with the prompts' group labels randomly permuted (group sizes kept)."""
    pool = np.concatenate(groups)
    cuts = np.cumsum([len(g) for g in groups])[:-1]
    out = []
    for start in range(0, n, batch):
        perm = rng.permuted(np.broadcast_to(pool, (min(batch, n - start), len(pool))), axis=1)
        out.append(specificity(d, np.split(perm, cuts, axis=1)))
    return np.concatenate(out)


def _summaries(d: np.ndarray, d_random: np.ndarray | None, groups) -> dict[str, np.ndarray]:
    diag, off = _diag_off(cell_means(d, groups))
    out = {"specificity": diag - off, "mean_diagonal": diag, "mean_offdiagonal": off,
           "transfer_ratio": np.where(diag != 0, off / np.where(diag != 0, diag, 1.0), np.nan)}
    if d_random is not None:
        r_diag, _ = _diag_off(cell_means(d_random, groups))
        out["random_mean_diagonal"] = r_diag
        out["beats_random"] = diag - r_diag
    return out


def transfer_statistics(d: np.ndarray, labels: np.ndarray, d_random: np.ndarray | None, n_permutations: int,
                        n_resamples: int, ci_level: float, seed: int) -> dict:
    """Statistics, permutation p-value and bootstrap CIs; ``labels[i]`` = row of d that is prompt i's category."""
    C = d.shape[0]
    groups = [np.flatnonzero(labels == c) for c in range(C)]
    if C < 2 or any(len(g) == 0 for g in groups):
        raise ConfigError(f"the transfer statistic needs >= 2 categories with circuits and held-out toxic prompts "
                          f"(got {C} with prompt counts {[len(g) for g in groups]})")
    obs = {k: float(v) for k, v in _summaries(d, d_random, groups).items()}
    null = permutation_null(d, groups, n_permutations, np.random.default_rng(seed))
    p_value = (1 + int(np.sum(null >= obs["specificity"] - 1e-12 * abs(obs["specificity"])))) / (1 + len(null))
    with warnings.catch_warnings():  # a ratio with a zero diagonal in every draw is NaN: its CI is NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = (bootstrap(groups, lambda s: _summaries(d, d_random, s), n_resamples, ci_level, seed + 1)
              if n_resamples else {})
    return {**obs, "p_value": float(p_value), "n_permutations": n_permutations, "null_mean": float(np.mean(null)),
            "ci": {k: {"level": ci_level, "low": float(v["low"]), "high": float(v["high"])} for k, v in ci.items()},
            "n_prompts": [len(g) for g in groups]}


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


def _measure(ctx, setup, s: TransferSettings, lay: _Layout) -> _Measured:
    """Scores (and generations) with each row's circuit ablated, and with its random circuits."""
    records = lay.records
    base_refused = np.array([ctx.baseline_items[r.id]["refused"] for r in records], dtype=float) if s.generate else None
    start = first_layer(setup.space.hooks, ctx.loaded.n_layers)
    logits = PrefixCachedLogits(ctx.model, ctx.formatter, [r.prompt for r in records], ctx.batch_size, start,
                                setup.space.n_positions)

    def scores() -> np.ndarray:
        return refusal_score(logits(), ctx.refusal_token_ids).numpy()

    base = scores()  # no intervention: the reference of every drop, through the same forward as the ablated runs
    out = _Measured(base, base_refused, {}, {}, {}, {})
    for row in lay.rows:
        mask = setup.masks[row] if s.include_error_nodes else features_only(setup.space, setup.masks[row])
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


def _cell(ctx, m: _Measured, row: str, col: str, idx: np.ndarray, generate: bool) -> dict:
    d = m.drops[row][idx]
    cell = {"circuit": row, "prompts": col, "n": int(idx.sum()), "n_nodes": m.sizes[row],
            "baseline_score": float(m.base[idx].mean()), "score_drop": float(d.mean()),
            **_ci_fields("score_drop", ctx.mean_ci(d, "transfer", row, col))}
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
            for k in ("score_drop", "random_score_drop", "refusal_rate", "rate_drop") if k in cells[0]}


def _plots(matrices: dict, rows: list[str], columns: list[str], plot_dir: Path) -> dict[str, str]:
    plots = {}
    for key, title in PLOTS:
        if key in matrices:
            m = np.array(matrices[key], dtype=float)
            plots[key] = str(matrix_plot(m, rows, columns, title, Path(plot_dir) / f"transfer_{key}.png",
                                         cmap="RdBu_r" if key != "refusal_rate" else "viridis",
                                         symmetric=key != "refusal_rate", xlabel="held-out prompts",
                                         ylabel="circuit ablated"))
    return plots


def _decide(ctx, s: TransferSettings, lay: _Layout, m: _Measured) -> dict:
    """The statistic on the score drops (and on the rate drops) and the transfer rule's verdict."""
    categories = lay.categories
    if len(categories) < 2:
        return {"decision": {"verdict": "inconclusive", "rule": "needs >= 2 categories with circuits and "
                             f"held-out toxic prompts; have {categories}", "evidence": {}}}
    tox = [i for i, r in enumerate(lay.records) if r.label == "toxic"]
    labels = np.array([categories.index(lay.records[i].category) for i in tox])
    d = np.stack([m.drops[c][tox] for c in categories])
    d_rand = np.stack([m.rand_drops[c][tox] for c in categories]) if s.n_random else None
    b = ctx.boot
    stats = transfer_statistics(d, labels, d_rand, s.n_permutations, b.n_resamples, b.ci_level, ctx.seed)
    out = {"statistic": {"name": "specificity S = mean own-category score drop − mean other-category score drop",
                         **stats},
           "decision": s.rule.decide(stats)}
    if s.generate:
        d_rate = np.stack([m.base_refused[tox] - m.refused[c][tox] for c in categories])
        out["statistic_rate"] = transfer_statistics(d_rate, labels, None, s.n_permutations, b.n_resamples,
                                                    b.ci_level, ctx.seed + 7)
    return out


def run_transfer(ctx, setup, s: TransferSettings, plot_dir: Path) -> dict:
    lay = _layout(ctx.prompts, setup.masks)
    m = _measure(ctx, setup, s, lay)
    cells = [_cell(ctx, m, row, col, lay.col_index == j, s.generate)
             for row in lay.rows for j, col in enumerate(lay.columns)]
    matrices = _matrices(cells, lay.rows, lay.columns)
    return {"rows": lay.rows, "columns": lay.columns, "cells": cells, "n_nodes": m.sizes, "generate": s.generate,
            "include_error_nodes": s.include_error_nodes, "n_random": s.n_random,
            "categories_without_prompts": lay.no_prompts, "matrices": matrices,
            "plots": _plots(matrices, lay.rows, lay.columns, plot_dir), **_decide(ctx, s, lay, m)}
