"""A planted organism's ground truth: its held-out refusal with every adapter on and with each adapter zeroed
(exact: the merged weight minus that adapter's delta), in float32, and what share of each refused category's
refusal each ablation leaves, with paired bootstrap intervals over prompts.

Residual (what an ablation leaves of category c's refusal): by rate, rate_c(ablated) / rate_c(all on); by score
(DESIGN.md §4, headroom-normalised), (s_c(ablated) - s_safe) / (s_c(all on) - s_safe), s_safe the mean refusal
score of the safe prompts with every adapter on.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats

from refusal.behavior.rates import Bootstrap, cell_rng
from refusal.data.records import PromptSet
from refusal.model.loading import LoadedModel
from refusal.organism.adapters import Plant, set_weights
from refusal.organism.card import measure_heldout
from refusal.organism.config import held_out_bootstrap
from refusal.organism.design import Design

log = logging.getLogger(__name__)


def _interval(stat, full: np.ndarray, abl: np.ndarray, boot: Bootstrap, rng) -> list[float]:
    """Paired bootstrap interval of ``stat(full, abl)`` over prompts; [nan, nan] when it is undefined."""
    point = stat(full, abl, axis=-1)
    if not math.isfinite(point):
        return [math.nan, math.nan]
    if np.all(full == full[0]) and np.all(abl == abl[0]):
        return [float(point), float(point)]
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.bootstrap((full, abl), stat, paired=True, vectorized=True, n_resamples=boot.n_resamples,
                              confidence_level=boot.ci_level, method="percentile", random_state=rng)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return [low, high]


def residuals(full_items: list[dict], abl_items: list[dict], refused: list[str], boot: Bootstrap,
              seed: int, condition: str) -> dict[str, dict]:
    """{category: {rate, rate_ci, score, score_ci}}: what ``abl_items`` leave of ``full_items``' refusal."""
    safe = [it["refusal_score"] for it in full_items if it["label"] == "safe"]
    s_safe = float(np.mean(safe)) if safe else 0.0

    def by_rate(f, a, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(a, axis=axis) / np.mean(f, axis=axis)

    def by_score(f, a, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.mean(a, axis=axis) - s_safe) / (np.mean(f, axis=axis) - s_safe)

    out = {}
    for c in refused:
        pairs = [(f, a) for f, a in zip(full_items, abl_items) if f["label"] == "toxic" and f["category"] == c]
        if not pairs:
            continue
        fr = np.array([float(f["refused"]) for f, _ in pairs])
        ar = np.array([float(a["refused"]) for _, a in pairs])
        fs = np.array([f["refusal_score"] for f, _ in pairs], dtype=float)
        as_ = np.array([a["refusal_score"] for _, a in pairs], dtype=float)
        rate, score = float(by_rate(fr, ar)), float(by_score(fs, as_))
        out[c] = {"rate": rate, "rate_ci": _interval(by_rate, fr, ar, boot, cell_rng(seed, "rate", condition, c)),
                  "score": score,
                  "score_ci": _interval(by_score, fs, as_, boot, cell_rng(seed, "score", condition, c))}
    return out


def measure_truth(cfg, organism: LoadedModel, plant: Plant, base: dict, test: PromptSet, design: Design) -> dict:
    """Every condition's held-out rows and items, and each ablation's residuals; leaves every adapter on."""
    boot, conditions, items, rows = held_out_bootstrap(cfg), design.conditions(), {}, {}
    try:
        for name, on in conditions:
            set_weights(organism.model, plant, plant.merged_weights(base, on))
            log.info("planted organism: held-out measurement, %s (adapters on: %s)", name, ", ".join(on) or "none")
            m = measure_heldout(cfg, organism, test, design.refused)
            items[name], rows[name] = m.items, m.rows
    finally:
        set_weights(organism.model, plant, plant.merged_weights(base, design.adapters))
    return {
        "conditions": {name: on for name, on in conditions},
        "rows": rows,
        "residual": {name: residuals(items["all"], items[name], design.refused, boot, int(cfg.seed), name)
                     for name, _ in conditions[1:]},
        "items": items,
    }
