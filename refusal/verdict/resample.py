"""Percentile bootstrap of many statistics at once, prompts resampled within groups (scipy.stats.bootstrap).

The groups are index arrays (one per toxic category, one for the safe prompts). scipy resamples each group
independently, with replacement, keeping its size (stratified resampling); the statistic receives the resampled
*indices* and looks the prompts' values up in every per-prompt array, so all measurements of one prompt (baseline,
each ablation, KL, induced score) stay paired within a resample. Vectorised: one call evaluates every resample.

A statistic that is undefined in some resample (a ratio whose headroom is exactly 0 there) is NaN in that resample,
and its interval is NaN: the data do not define it.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy import stats

Summaries = Callable[[list[np.ndarray]], dict[str, np.ndarray]]


def point(groups: list[np.ndarray], summarise: Summaries) -> dict[str, np.ndarray]:
    """The statistics on the data themselves (no resampling)."""
    return {k: v[..., 0] for k, v in summarise([g[None, :] for g in groups]).items()}


def intervals(groups: list[np.ndarray], summarise: Summaries, n_resamples: int, ci_level: float,
              seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{name: {"low", "high"}} percentile CIs of every statistic ``summarise`` returns.

    ``summarise(samples)``: samples[g] is an int array [B, n_g] of prompt indices of group g (B resamples); it
    returns {name: array [*shape, B]}, the statistic's shape first, the resamples last."""
    layout: list[tuple[str, tuple]] = []

    def flat(*samples, axis=-1):
        batch = [np.asarray(s).reshape(-1, np.shape(s)[-1]).astype(np.int64) for s in samples]
        out = summarise(batch)
        layout[:] = [(k, v.shape[:-1]) for k, v in out.items()]
        stacked = np.concatenate([v.reshape(-1, v.shape[-1]) for v in out.values()])
        return stacked if np.ndim(samples[0]) > 1 else stacked[:, 0]

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap([np.asarray(g, dtype=float) for g in groups], flat, n_resamples=n_resamples,
                              confidence_level=ci_level, method="percentile", vectorized=True,
                              random_state=np.random.default_rng(seed))
    low, high = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    out, start = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = {"low": low[start:start + size].reshape(shape), "high": high[start:start + size].reshape(shape)}
        start += size
    return out
