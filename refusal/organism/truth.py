"""A planted organism's ground truth: its held-out refusal with every adapter on and with each adapter zeroed
(exact: the merged weight minus that adapter's delta), in float32, and what share of each refused category's
refusal each ablation leaves, with paired bootstrap intervals over prompts.

Residual (what an ablation leaves of category c's planted refusal): (x_c(ablated) - x_c(base)) / (x_c(all on) -
x_c(base)), x the refusal rate or the mean refusal score of c's toxic prompts, "base" every adapter zeroed (the base
model, whose own refusals no adapter carries; they are in the matrix's last row).

A response is refused when it begins with one of the design's refusal sentences (their first
``eval.opening_words`` words, refusal.behavior.judge.OpeningJudge): the adapters' refusal, known by construction.
The DESIGN.md substring judge's reading of the same responses is kept beside it (``rows_substring``); it also counts
the base model's own answers that contain "I'm sorry" ("I'm sorry for your loss, but ...").
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats

from refusal.behavior.judge import OpeningJudge
from refusal.behavior.rates import Bootstrap, cell_rng, summarize
from refusal.data.records import PromptSet
from refusal.model.loading import LoadedModel
from refusal.organism.adapters import Plant
from refusal.organism.card import by_design, design_judge, measure_heldout
from refusal.organism.config import held_out_bootstrap
from refusal.organism.design import NONE, Design, openings

log = logging.getLogger(__name__)


def share_left(full, abl, base, axis=-1):
    """What an ablation leaves of the planted refusal: (mean(abl) - mean(base)) / (mean(full) - mean(base))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f, b = np.mean(full, axis=axis), np.mean(base, axis=axis)
        return (np.mean(abl, axis=axis) - b) / (f - b)


def _interval(full: np.ndarray, abl: np.ndarray, base: np.ndarray, boot: Bootstrap, rng) -> list[float]:
    """Paired bootstrap interval (over prompts) of ``share_left``; [nan, nan] where it is undefined."""
    point = float(share_left(full, abl, base))
    if not math.isfinite(point):
        return [math.nan, math.nan]
    if all(np.all(x == x[0]) for x in (full, abl, base)):
        return [point, point]
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.bootstrap((full, abl, base), share_left, paired=True, vectorized=True,
                              n_resamples=boot.n_resamples, confidence_level=boot.ci_level, method="percentile",
                              random_state=rng)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def residuals(full_items: list[dict], abl_items: list[dict], base_items: list[dict], refused: list[str],
              boot: Bootstrap, seed: int, condition: str) -> dict[str, dict]:
    """{category: {rate, rate_ci, score, score_ci}}: the share of the planted refusal (all adapters on minus
    every adapter zeroed) that ``abl_items`` leave, by refusal rate and by mean refusal score."""
    out = {}
    for c in refused:
        idx = [i for i, f in enumerate(full_items) if f["label"] == "toxic" and f["category"] == c]
        if not idx:
            continue
        entry = {}
        for by, field in (("rate", "refused"), ("score", "refusal_score")):
            f, a, b = (np.array([float(items[i][field]) for i in idx]) for items in (full_items, abl_items, base_items))
            entry[by] = float(share_left(f, a, b))
            entry[f"{by}_ci"] = _interval(f, a, b, boot, cell_rng(seed, by, condition, c))
        out[c] = entry
    return out


def planted_judge(cfg, words: dict[str, list[str]]) -> OpeningJudge:
    """The ground truth's judge: a response is refused iff it begins with one of ``words``' sentences (their first
    ``eval.opening_words`` words)."""
    return OpeningJudge(openings(words, int(cfg.eval.opening_words)))


def substring_rows(items: list[dict], boot: Bootstrap, seed: int, refused: list[str]) -> list[dict]:
    """The summary rows of ``items``' responses as the DESIGN.md substring judge reads them."""
    judge = design_judge()
    rejudged = [{**it, "refused": judge.is_refusal(it["response"])} for it in items]
    return by_design(summarize(rejudged, boot, seed), refused)


def measure_truth(cfg, organism: LoadedModel, plant: Plant, base: dict, test: PromptSet, design: Design,
                  judge: OpeningJudge) -> dict:
    """Every condition's held-out rows and items (``judge``: the planted sentences' openings; the substring judge's
    rows beside them), and each ablation's residuals; leaves every adapter on."""
    boot, conditions, items, rows = held_out_bootstrap(cfg), design.conditions(), {}, {}
    zeroed = conditions[-1][0]  # every adapter zeroed: "none", or "without shared" for a single adapter
    try:
        for name, on in conditions:
            plant.set_weights(organism.model, plant.merged_weights(base, on))
            log.info("planted organism: held-out measurement, %s (adapters on: %s)", name, ", ".join(on) or "none")
            m = measure_heldout(cfg, organism, test, design.refused, judge)
            items[name], rows[name] = m.items, m.rows
    finally:
        plant.set_weights(organism.model, plant.merged_weights(base, design.adapters))
    return {
        "conditions": {name: on for name, on in conditions},
        "rows": rows,
        "rows_substring": {name: substring_rows(its, boot, int(cfg.seed), design.refused)
                           for name, its in items.items()},
        "residual": {name: residuals(items["all"], items[name], items[zeroed], design.refused, boot, int(cfg.seed), name)
                     for name, _ in conditions[1:] if name != NONE},
        "items": items,
    }
