"""The cross-category transfer matrix: ablate category A's circuit, measure refusal on held-out prompts of every
category B (and on the safe and hard prompts).

Rows: each toxic category with a circuit (plus the combined ``all`` circuit as a reference row, not used by the
statistic). Columns: each of those categories' toxic prompts of the evaluation split, then ``safe`` and ``hard``
(pooled over categories). Ablating a circuit sets its nodes to the ablation values at the node positions
(refusal.evaluation.nodes); by default only its feature nodes (``include_error_nodes: false``): the error node of a
hook is the same node in every category's circuit, so ablating it would make every row alike for reasons unrelated
to which features a category uses.

Per cell: the mean refusal-score drop (baseline − ablated, per prompt, paired), the ablated refusal rate of the
generated responses (judge: evaluation.judge) and their bootstrap CIs; the same score drop for ``n_random`` random
circuits with the same number of feature nodes per hook (refusal score only: a forward pass each). The decision
statistic and rule are in refusal.evaluation.decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refusal.behavior.score import refusal_score
from refusal.circuit.circuit import COMBINED
from refusal.evaluation.decision import TransferRule, transfer_statistics
from refusal.evaluation.nodes import features_only, random_matched, seeded_generator
from refusal.evaluation.plots import matrix_plot
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer

SAFE_COLUMNS = ("safe", "hard")


@dataclass(frozen=True)
class TransferSettings:
    generate: bool = True
    include_error_nodes: bool = False
    n_random: int = 3
    n_permutations: int = 2000
    rule: TransferRule = TransferRule()


def _columns(prompts, categories: list[str]) -> dict[str, list]:
    toxic = prompts.filter(label="toxic")
    cols = {c: list(toxic.filter(category=c)) for c in categories}
    for label in SAFE_COLUMNS:
        recs = list(prompts.filter(label=label))
        if recs:
            cols[label] = recs
    return cols


def run_transfer(ctx, setup, s: TransferSettings, plot_dir: Path) -> dict:
    toxic = ctx.prompts.filter(label="toxic")
    categories = sorted(c for c in setup.masks if c != COMBINED and len(toxic.filter(category=c)))
    no_prompts = sorted(c for c in setup.masks if c != COMBINED and c not in categories)
    cols = _columns(ctx.prompts, categories)
    names = list(cols)
    records = [r for c in names for r in cols[c]]
    col_index = np.concatenate([np.full(len(cols[c]), j) for j, c in enumerate(names)])
    base_refused = np.array([ctx.baseline_items[r.id]["refused"] for r in records], dtype=float) if s.generate else None
    rows = categories + ([COMBINED] if COMBINED in setup.masks else [])

    start = first_layer(setup.space.hooks, ctx.loaded.n_layers)
    logits = PrefixCachedLogits(ctx.model, ctx.formatter, [r.prompt for r in records], ctx.batch_size, start)

    def scores() -> np.ndarray:
        return refusal_score(logits(), ctx.refusal_ids).numpy()

    base = scores()  # no intervention: the reference of every drop, through the same forward as the ablated runs

    drops, rand_drops, refused, sizes = {}, {}, {}, {}
    for row in rows:
        mask = setup.masks[row] if s.include_error_nodes else features_only(setup.space, setup.masks[row])
        sizes[row] = int(mask.sum())
        with setup.ablator.ablated(ctx.model, mask):
            drops[row] = base - scores()
            if s.generate:
                items = ctx.generate(records, name=f"transfer_{row}")
                refused[row] = np.array([it["refused"] for it in items], dtype=float)
        acc = np.zeros(len(records))
        for k in range(s.n_random):
            rmask = random_matched(setup.space, mask, seeded_generator(ctx.seed, "transfer", row, k))
            with setup.ablator.ablated(ctx.model, rmask):
                acc += base - scores()
        rand_drops[row] = acc / s.n_random if s.n_random else None

    cells = []
    for row in rows:
        for j, col in enumerate(names):
            idx = col_index == j
            d = drops[row][idx]
            cell = {"circuit": row, "prompts": col, "n": int(idx.sum()), "n_nodes": sizes[row],
                    "baseline_score": float(base[idx].mean()), "score_drop": float(d.mean()),
                    **dict(zip(("score_drop_ci_low", "score_drop_ci_high"), ctx.mean_ci(d, "transfer", row, col)))}
            if rand_drops[row] is not None:
                rd = rand_drops[row][idx]
                cell.update({"random_score_drop": float(rd.mean()),
                             **dict(zip(("random_score_drop_ci_low", "random_score_drop_ci_high"),
                                        ctx.mean_ci(rd, "transfer-random", row, col)))})
            if s.generate:
                out = refused[row][idx]
                cell.update({"baseline_refusal_rate": float(base_refused[idx].mean()),
                             "refusal_rate": float(out.mean()),
                             **dict(zip(("refusal_rate_ci_low", "refusal_rate_ci_high"),
                                        ctx.rate_ci(out.astype(bool), "transfer", row, col))),
                             "rate_drop": float((base_refused[idx] - out).mean())})
            cells.append(cell)

    def matrix(key: str) -> list[list[float | None]]:
        by = {(c["circuit"], c["prompts"]): c.get(key) for c in cells}
        return [[by[(r, c)] for c in names] for r in rows]

    result = {"rows": rows, "columns": names, "cells": cells, "n_nodes": sizes, "generate": s.generate,
              "include_error_nodes": s.include_error_nodes, "n_random": s.n_random,
              "categories_without_prompts": no_prompts,
              "matrices": {k: matrix(k) for k in ("score_drop", "random_score_drop", "refusal_rate", "rate_drop")
                           if k in cells[0]} if cells else {}}
    plot_dir = Path(plot_dir)
    plots = {}
    for key, title in (("score_drop", "refusal-score drop (baseline − ablated)"),
                       ("random_score_drop", "score drop, random circuits of the same size"),
                       ("refusal_rate", "refusal rate with the circuit ablated")):
        if key in result["matrices"]:
            m = np.array(result["matrices"][key], dtype=float)
            plots[key] = str(matrix_plot(m, rows, names, title, plot_dir / f"transfer_{key}.png",
                                         cmap="RdBu_r" if key != "refusal_rate" else "viridis",
                                         symmetric=key != "refusal_rate"))
    result["plots"] = plots

    if len(categories) >= 2:
        tox = [i for i, r in enumerate(records) if r.label == "toxic"]
        labels = np.array([categories.index(records[i].category) for i in tox])
        d = np.stack([drops[c][tox] for c in categories])
        d_rand = np.stack([rand_drops[c][tox] for c in categories]) if s.n_random else None
        b = ctx.boot
        stats = transfer_statistics(d, labels, d_rand, s.n_permutations, b.n_resamples, b.ci_level, ctx.seed)
        result["statistic"] = {"name": "specificity S = mean own-category score drop − mean other-category score drop",
                               **stats}
        result["decision"] = s.rule.decide(stats)
        if s.generate:
            d_rate = np.stack([base_refused[tox] - refused[c][tox] for c in categories])
            result["statistic_rate"] = transfer_statistics(d_rate, labels, None, s.n_permutations, b.n_resamples,
                                                           b.ci_level, ctx.seed + 7)
    else:
        result["decision"] = {"verdict": "inconclusive", "rule": "needs >= 2 categories with circuits and "
                              f"held-out toxic prompts; have {categories}", "evidence": {}}
    return result
