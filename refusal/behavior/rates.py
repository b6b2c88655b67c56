"""Refusal rate and mean refusal score per category x label, with seeded bootstrap confidence intervals.

Rates whose outcomes are all equal (0 % or 100 %, including a single prompt) have no bootstrap spread; they get
the Wilson score interval instead (``scipy.stats.binomtest(...).proportion_ci``). A mean score over all-equal
values (or one value) is reported as the point itself. Every row says which interval it carries.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats

from refusal.data.records import LABELS
from refusal.errors import ConfigError, check_choice
from refusal.utils.io import stable_hash

CI_METHODS = ("percentile", "basic", "BCa")
ALL = "all"  # category name of the per-label rows that pool every category


def check_ci_options(ci_level, n_resamples, ci_method) -> None:
    if not isinstance(ci_level, (int, float)) or isinstance(ci_level, bool) or not 0.0 < float(ci_level) < 1.0:
        raise ConfigError(f"behavior.ci_level={ci_level!r} is not valid; use a number in (0, 1), e.g. 0.95")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise ConfigError(f"behavior.n_resamples={n_resamples!r} is not valid; use an int >= 100")
    check_choice("behavior.ci_method", ci_method, CI_METHODS)


def cell_rng(seed: int, *cell: str) -> np.random.Generator:
    """A generator per cell, so one cell's interval does not depend on which other cells exist."""
    return np.random.default_rng([int(seed), int(stable_hash(list(cell)), 16)])


def _bootstrap_mean(x: np.ndarray, level: float, n_resamples: int, method: str, rng) -> tuple[float, float]:
    res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method=method,
                          random_state=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def rate_interval(outcomes, level: float = 0.95, n_resamples: int = 1000, method: str = "percentile",
                  rng=None) -> tuple[float, float, str]:
    """(low, high, how) for the refusal rate of boolean ``outcomes``; how is bootstrap, wilson or none."""
    x = np.asarray(list(outcomes), dtype=float)
    n, k = len(x), int(x.sum())
    if n == 0:
        return math.nan, math.nan, "none"
    if 0 < k < n:
        low, high = _bootstrap_mean(x, level, n_resamples, method, rng if rng is not None else np.random.default_rng(0))
        if math.isfinite(low) and math.isfinite(high):
            return low, high, "bootstrap"
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high), "wilson"


def mean_interval(values, level: float = 0.95, n_resamples: int = 1000, method: str = "percentile",
                  rng=None) -> tuple[float, float, str]:
    """(low, high, how) for the mean of ``values``; how is bootstrap, point (all equal) or none."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, "none"
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), "point"
    low, high = _bootstrap_mean(x, level, n_resamples, method, rng if rng is not None else np.random.default_rng(0))
    if not (math.isfinite(low) and math.isfinite(high)):
        return float(x.mean()), float(x.mean()), "point"
    return low, high, "bootstrap"


def _row(label: str, category: str, items: list[dict], level, n_resamples, method, seed) -> dict:
    refused = [bool(r["refused"]) for r in items]
    scores = np.asarray([r.get("refusal_score", math.nan) for r in items], dtype=float)
    r_low, r_high, r_how = rate_interval(refused, level, n_resamples, method, cell_rng(seed, "rate", label, category))
    s_low, s_high, s_how = mean_interval(scores, level, n_resamples, method, cell_rng(seed, "score", label, category))
    finite = scores[np.isfinite(scores)]
    return {
        "label": label, "category": category, "n": len(items), "n_refused": int(sum(refused)),
        "refusal_rate": float(np.mean(refused)),
        "refusal_rate_ci_low": r_low, "refusal_rate_ci_high": r_high, "refusal_rate_ci_method": r_how,
        "refusal_score_mean": float(finite.mean()) if len(finite) else math.nan,
        "refusal_score_ci_low": s_low, "refusal_score_ci_high": s_high, "refusal_score_ci_method": s_how,
    }


def summarize(items: Iterable[dict], ci_level: float = 0.95, n_resamples: int = 1000, ci_method: str = "percentile",
              seed: int = 0) -> list[dict]:
    """Rows per (label, category) and per label over all categories (category ``all``).

    ``items``: dicts with ``label``, ``category``, ``refused`` (bool) and optionally ``refusal_score``."""
    check_ci_options(ci_level, n_resamples, ci_method)
    items = list(items)
    rows = []
    for label in LABELS:
        of_label = [r for r in items if r["label"] == label]
        if not of_label:
            continue
        for category in sorted({r["category"] for r in of_label}):
            cell = [r for r in of_label if r["category"] == category]
            rows.append(_row(label, category, cell, ci_level, n_resamples, ci_method, seed))
        rows.append(_row(label, ALL, of_label, ci_level, n_resamples, ci_method, seed))
    return rows


def rates_by_label(rows: list[dict]) -> dict[str, float]:
    """{label: refusal rate over all its categories} from ``summarize`` rows (hard = over-refusal)."""
    return {r["label"]: r["refusal_rate"] for r in rows if r["category"] == ALL}
