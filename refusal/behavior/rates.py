"""Refusal rate and mean refusal score per category x label, with seeded bootstrap confidence intervals.

Rates whose outcomes are all equal (0 % or 100 %, including a single prompt) have no bootstrap spread; they get
the Wilson score interval instead (``scipy.stats.binomtest(...).proportion_ci``). A mean score over all-equal
values (or one value) is reported as the point itself. Every row says which interval it carries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from omegaconf import MISSING
from scipy import stats

from refusal.config import choice, integer, number
from refusal.data.records import LABELS
from refusal.utils.io import stable_hash

CI_METHODS = ("percentile", "basic", "BCa")
ALL = "all"  # category name of the per-label rows that pool every category


@dataclass
class Bootstrap:
    """The confidence-interval settings of every refusal measurement (``behavior.bootstrap``,
    ``evaluation.bootstrap``, ``model.eval.bootstrap`` of an organism); also their config schema."""

    n_resamples: int = MISSING  # bootstrap resamples per interval (scipy.stats.bootstrap)
    ci_level: float = MISSING
    ci_method: str = MISSING  # percentile | basic | BCa

    @classmethod
    def from_cfg(cls, node, key: str) -> "Bootstrap":
        """The checked settings of the config node at ``key``."""
        return cls(n_resamples=integer(f"{key}.n_resamples", node.n_resamples, 100),
                   ci_level=number(f"{key}.ci_level", node.ci_level, 0, 1, open_lo=True, open_hi=True),
                   ci_method=choice(f"{key}.ci_method", node.ci_method, CI_METHODS))


def cell_rng(seed: int, *cell: str) -> np.random.Generator:
    """A generator per cell, so one cell's interval does not depend on which other cells exist."""
    return np.random.default_rng([int(seed), int(stable_hash(list(cell)), 16)])


def _bootstrap_mean(x: np.ndarray, boot: Bootstrap, rng: np.random.Generator) -> tuple[float, float]:
    res = stats.bootstrap((x,), np.mean, n_resamples=boot.n_resamples, confidence_level=boot.ci_level,
                          method=boot.ci_method, random_state=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def rate_interval(outcomes, boot: Bootstrap, rng: np.random.Generator) -> tuple[float, float, str]:
    """(low, high, how) for the refusal rate of boolean ``outcomes``; how is bootstrap, wilson or none."""
    x = np.asarray(list(outcomes), dtype=float)
    n, k = len(x), int(x.sum())
    if n == 0:
        return math.nan, math.nan, "none"
    if 0 < k < n:
        low, high = _bootstrap_mean(x, boot, rng)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, "bootstrap"
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=boot.ci_level, method="wilson")
    return float(ci.low), float(ci.high), "wilson"


def mean_interval(values, boot: Bootstrap, rng: np.random.Generator) -> tuple[float, float, str]:
    """(low, high, how) for the mean of ``values``; how is bootstrap, point (all equal) or none."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, "none"
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), "point"
    low, high = _bootstrap_mean(x, boot, rng)
    if not (math.isfinite(low) and math.isfinite(high)):
        return float(x.mean()), float(x.mean()), "point"
    return low, high, "bootstrap"


def _row(label: str, category: str, items: list[dict], boot: Bootstrap, seed: int) -> dict:
    refused = [bool(r["refused"]) for r in items]
    scores = np.asarray([r.get("refusal_score", math.nan) for r in items], dtype=float)
    r_low, r_high, r_how = rate_interval(refused, boot, cell_rng(seed, "rate", label, category))
    s_low, s_high, s_how = mean_interval(scores, boot, cell_rng(seed, "score", label, category))
    finite = scores[np.isfinite(scores)]
    return {
        "label": label, "category": category, "n": len(items), "n_refused": int(sum(refused)),
        "refusal_rate": float(np.mean(refused)),
        "refusal_rate_ci_low": r_low, "refusal_rate_ci_high": r_high, "refusal_rate_ci_method": r_how,
        "refusal_score_mean": float(finite.mean()) if len(finite) else math.nan,
        "refusal_score_ci_low": s_low, "refusal_score_ci_high": s_high, "refusal_score_ci_method": s_how,
    }


def summarize(items: Iterable[dict], boot: Bootstrap, seed: int) -> list[dict]:
    """Rows per (label, category) and per label over all categories (category ``all``), with ``boot``'s intervals
    drawn from ``seed``.

    ``items``: dicts with ``label``, ``category``, ``refused`` (bool) and optionally ``refusal_score``."""
    items = list(items)
    rows = []
    for label in LABELS:
        of_label = [r for r in items if r["label"] == label]
        if not of_label:
            continue
        for category in sorted({r["category"] for r in of_label}):
            cell = [r for r in of_label if r["category"] == category]
            rows.append(_row(label, category, cell, boot, seed))
        rows.append(_row(label, ALL, of_label, boot, seed))
    return rows


def rates_by_label(rows: list[dict]) -> dict[str, float]:
    """{label: refusal rate over all its categories} from ``summarize`` rows (hard = over-refusal)."""
    return {r["label"]: r["refusal_rate"] for r in rows if r["category"] == ALL}
