"""Refusal rates per category x label: bootstrap CIs cover the true rate, degenerate cells get Wilson intervals,
results repeat for a seed."""
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from refusal.behavior.rates import ALL, Bootstrap, mean_interval, rate_interval, rates_by_label, summarize
from refusal.errors import ConfigError

BOOT = Bootstrap(n_resamples=200, ci_level=0.95, ci_method="percentile")
RNG = np.random.default_rng
TRUE_P = {"cybercrime": 0.1, "violence": 0.5, "fraud": 0.85}


def simulated_items(rng: np.random.Generator, n: int = 200) -> list[dict]:
    items = []
    for cat, p in TRUE_P.items():
        for outcome in rng.random(n) < p:
            items.append({"category": cat, "label": "toxic", "refused": bool(outcome),
                          "refusal_score": float(rng.normal(2.0 * p, 1.0))})
    return items


def test_per_category_ci_covers_the_true_rate_about_95_percent():
    rng = np.random.default_rng(12345)
    reps = 150
    hits = {c: 0 for c in TRUE_P}
    score_hits = {c: 0 for c in TRUE_P}
    for rep in range(reps):
        rows = summarize(simulated_items(rng), Bootstrap(400, 0.95, "percentile"), seed=rep)
        for r in rows:
            if r["category"] == ALL:
                continue
            p = TRUE_P[r["category"]]
            hits[r["category"]] += r["refusal_rate_ci_low"] <= p <= r["refusal_rate_ci_high"]
            score_hits[r["category"]] += r["refusal_score_ci_low"] <= 2.0 * p <= r["refusal_score_ci_high"]
    for cat in TRUE_P:
        # binomial sd of the coverage over 150 repetitions is ~1.8 points: 0.89..0.99 is a 3-sd band
        assert 0.89 <= hits[cat] / reps <= 0.99, (cat, hits[cat] / reps)
        assert 0.89 <= score_hits[cat] / reps <= 0.99, (cat, score_hits[cat] / reps)


def test_a_too_narrow_interval_would_fail_coverage():
    """The coverage test can fail: a 50 % interval covers far less than 89 % of the time."""
    rng = np.random.default_rng(7)
    covered = sum(
        rate_interval(rng.random(200) < 0.5, Bootstrap(400, 0.5, "percentile"), np.random.default_rng(i))[0] <= 0.5
        <= rate_interval(rng.random(200) < 0.5, Bootstrap(400, 0.5, "percentile"), np.random.default_rng(i))[1]
        for i in range(60)
    )
    assert covered / 60 < 0.89


def test_degenerate_cells():
    low, high, how = rate_interval([True] * 20, BOOT, RNG(0))
    assert how == "wilson" and high == pytest.approx(1.0) and 0.8 < low < 1.0
    low, high, how = rate_interval([False] * 20, BOOT, RNG(0))
    assert how == "wilson" and low == pytest.approx(0.0) and 0.0 < high < 0.2
    assert rate_interval([True], BOOT, RNG(0))[2] == "wilson"
    assert rate_interval([], BOOT, RNG(0))[2] == "none"
    assert mean_interval([1.5, 1.5, 1.5], BOOT, RNG(0)) == (1.5, 1.5, "point")
    assert mean_interval([float("nan")], BOOT, RNG(0))[2] == "none"


def test_rows_counts_labels_and_seeded_repeatability():
    items = simulated_items(np.random.default_rng(0), n=30)
    items += [{"category": "benign", "label": "safe", "refused": False, "refusal_score": -3.0}] * 5
    items += [{"category": "cybercrime", "label": "hard", "refused": r, "refusal_score": 0.0} for r in (True, False)]
    rows = summarize(items, BOOT, seed=3)
    assert rows == summarize(items, BOOT, seed=3)
    cells = {(r["label"], r["category"]): r for r in rows}
    assert set(cells) == {("toxic", c) for c in [*TRUE_P, ALL]} | {("safe", "benign"), ("safe", ALL),
                                                                  ("hard", "cybercrime"), ("hard", ALL)}
    assert cells[("toxic", ALL)]["n"] == 90
    benign = cells[("safe", "benign")]
    assert benign["refusal_rate"] == 0.0 and benign["refusal_rate_ci_method"] == "wilson"
    assert cells[("hard", "cybercrime")]["refusal_rate"] == 0.5
    by_label = rates_by_label(rows)
    assert set(by_label) == {"toxic", "safe", "hard"} and math.isclose(by_label["hard"], 0.5)
    node = OmegaConf.create({"n_resamples": 200, "ci_level": 1.5, "ci_method": "percentile"})
    with pytest.raises(ConfigError, match=r"behavior.bootstrap.ci_level=1.5 .* in \(0, 1\)"):
        Bootstrap.from_cfg(node, "behavior.bootstrap")
    with pytest.raises(ConfigError, match="behavior.bootstrap.ci_method='normal'"):
        Bootstrap.from_cfg(OmegaConf.merge(node, {"ci_level": 0.9, "ci_method": "normal"}), "behavior.bootstrap")
