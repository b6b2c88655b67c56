"""The layer evidence: exact statistics on hand-computed scores, planted effects recovered, counting by headroom,
JSON output, seeding, resolution, and input checks."""
import json

import numpy as np
import pytest
from verdict_testlib import CATEGORIES, block, evidence, monolithic, synth, uniform

from refusal.errors import ConfigError
from refusal.verdict import LayerRule, layer_evidence
from refusal.verdict.power import prompts_needed

HAND = {"base": [4, 6, 2, 4], "labels": [0, 0, 1, 1], "safe_base": [-1, 1], "shared": [1, 0, 1, 2],
        "safe_kl": [0.01, 0.03], "random": [[4, 5, 2, 3], [4, 4, 2, 2]],
        "per_category": [[0, 2, 2, 4], [4, 6, 1, 1]], "induced": [3, 5], "categories": ["a", "b"]}


def est(t):
    return t["estimate"]


def test_statistics_match_a_hand_computation():
    ev = layer_evidence(**HAND, n_resamples=200)
    a, b = ev["per_category"]
    assert est(ev["safe_floor"]) == 0 and [est(a["headroom"]), est(b["headroom"])] == [5, 3]
    assert [est(a["residual"]), est(b["residual"])] == pytest.approx([0.1, 0.5])
    assert [est(a["shared_share"]), est(b["shared_share"])] == pytest.approx([0.9, 0.5])
    assert [est(a["random_residual"]), est(b["random_residual"])] == pytest.approx([0.85, 0.75])
    assert [est(a["random_gap"]), est(b["random_gap"])] == pytest.approx([0.75, 0.25])
    assert np.allclose(ev["drop_matrix"]["estimate"], [[0.8, 0.0], [0.0, 2 / 3]])
    assert est(ev["dissociation"]["mean"]) == pytest.approx((0.8 + 2 / 3) / 2)
    assert [(p["a"], p["b"]) for p in ev["dissociation"]["pairs"]] == [("a", "b")]
    assert est(ev["induced_fraction"]) == pytest.approx(1.0) and est(ev["safe_kl"]) == pytest.approx(0.02)
    assert est(ev["mean_residual"]) == pytest.approx(0.3) and est(ev["mean_shared_share"]) == pytest.approx(0.7)
    assert ev["counted"] == ["a", "b"] and ev["n_prompts"] == {"toxic": {"a": 2, "b": 2}, "safe": 2}
    assert ev["n_random_sets"] == 2


def test_the_shared_share_ci_is_the_flipped_residual_ci():
    ev = layer_evidence(**HAND, n_resamples=200)
    r, s = ev["per_category"][0]["residual"], ev["per_category"][0]["shared_share"]
    assert s["low"] == pytest.approx(1 - r["high"]) and s["high"] == pytest.approx(1 - r["low"])
    assert r["low"] < r["estimate"] < r["high"]


def test_planted_effects_are_recovered_with_cis_that_cover_them():
    ev = evidence(0.35, block(0.6, 0.1), n=40, m=40)
    for p in ev["per_category"]:
        assert p["residual"]["low"] < 0.35 < p["residual"]["high"]
        assert p["random_residual"]["low"] < 0.95 < p["random_residual"]["high"]
    assert np.allclose(ev["drop_matrix"]["estimate"], block(0.6, 0.1), atol=0.06)
    mean = ev["dissociation"]["mean"]
    assert mean["low"] < 0.5 < mean["high"] and len(ev["dissociation"]["pairs"]) == 6
    assert ev["induced_fraction"]["low"] < 0.8 < ev["induced_fraction"]["high"]


def test_uniform_drops_give_no_dissociation():
    mean = monolithic()["dissociation"]["mean"]
    assert -0.1 < mean["low"] < 0 < mean["high"] < 0.1


def test_a_category_without_headroom_is_not_counted_and_left_out_of_aggregates():
    kw = synth(0.02, uniform(0.6), headroom=[8.0, 8.0, 8.0, 0.0])
    ev = layer_evidence(**kw, n_resamples=500)
    assert ev["counted"] == ["cyber", "fraud", "hate"]
    violence = ev["per_category"][3]
    assert not violence["counted"] and violence["headroom"]["low"] <= 0
    assert {frozenset((p["a"], p["b"])) for p in ev["dissociation"]["pairs"]} == {
        frozenset(("cyber", "fraud")), frozenset(("cyber", "hate")), frozenset(("fraud", "hate"))}


def test_an_undefined_ratio_is_none_and_the_dict_is_strict_json():
    kw = dict(HAND, base=[4, 6, 0, 0], safe_base=[0, 0])  # category b: headroom exactly 0 in every resample
    ev = layer_evidence(**kw, n_resamples=200)
    b = ev["per_category"][1]
    assert not b["counted"] and b["residual"] == {"estimate": None, "low": None, "high": None}
    assert ev["dissociation"] is None  # one counted category: no pair
    text = json.dumps(ev, allow_nan=False)
    assert json.loads(text) == ev


def test_the_full_evidence_round_trips_through_json():
    ev = monolithic()
    assert json.loads(json.dumps(ev, allow_nan=False)) == ev


def test_optional_measurements_are_none_when_not_given():
    kw = {k: v for k, v in HAND.items() if k not in ("random", "per_category", "induced")}
    ev = layer_evidence(**kw, n_resamples=200)
    assert ev["n_random_sets"] == 0 and ev["per_category"][0]["random_gap"] is None
    assert ev["drop_matrix"] is None and ev["dissociation"] is None and ev["induced_fraction"] is None


def test_seeded_and_the_seed_matters():
    kw = synth(0.35, block(0.6, 0.1))
    one, two = (layer_evidence(**kw, n_resamples=300, seed=s) for s in (3, 3))
    other = layer_evidence(**kw, n_resamples=300, seed=4)
    assert one == two
    assert one["mean_residual"]["low"] != other["mean_residual"]["low"]
    assert one["mean_residual"]["estimate"] == other["mean_residual"]["estimate"]


def test_resolution_shrinks_with_more_prompts_and_says_how_many_are_needed():
    few, many = evidence(0.35, block(0.6, 0.1), n=8, m=8), evidence(0.35, block(0.6, 0.1), n=64, m=64)
    w_few, w_many = few["resolution"]["half_width"], many["resolution"]["half_width"]
    assert w_many["residual"] < w_few["residual"] / 2 and w_many["dissociation_pair"] < w_few["dissociation_pair"]
    assert few["resolution"]["prompts_needed"]["residual"] == prompts_needed(w_few["residual"], 8)
    assert "±" in few["resolution"]["sentence"]
    assert prompts_needed(0.2, 10, 0.1) == 40 and prompts_needed(0.05, 10, 0.1) == 3
    assert prompts_needed(None, 10) is None


@pytest.mark.parametrize("change,message", [
    ({"labels": [0, 0, 1, 2]}, r"^verdict evidence: labels range over \[0, 2\]; valid are 0 \.\. 1 "),
    ({"labels": [0, 0, 0, 1]}, r"^verdict evidence: every category and the safe prompts need >= 2 prompts; .*'b': 1"),
    ({"shared": [1, 0, 1]}, r"^verdict evidence: shared has 3 values; it must have 4, one per prompt$"),
    ({"safe_kl": [0.1, float("nan")]}, r"^verdict evidence: safe_kl has 1 non-finite values"),
    ({"per_category": [[0, 2, 2, 4]]}, r"^verdict evidence: per_category has shape \(1, 4\); use finite scores \[2 "),
    ({"random": [[1, 2]]}, r"^verdict evidence: random has shape \(1, 2\); use finite scores \[n_random, 4\]"),
    ({"labels": [0.0, 0.0, 1.0, 1.0]}, r"^verdict evidence: labels must be 4 integer category indices"),
])
def test_bad_inputs_are_config_errors_naming_the_input(change, message):
    with pytest.raises(ConfigError, match=message):
        layer_evidence(**dict(HAND, **change), n_resamples=200)


@pytest.mark.parametrize("kw,message", [
    ({"n_resamples": 10}, r"^verdict\.n_resamples=10 is not valid; use an int >= 100$"),
    ({"ci_level": 1.0}, r"^verdict\.ci_level=1\.0 is not valid; use a number in \(0, 1\)$")])
def test_bad_bootstrap_settings_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        layer_evidence(**HAND, **kw)


def test_a_category_with_fewer_than_min_prompts_is_measured_and_listed_but_not_counted():
    kw = synth(0.02, uniform(0.6))
    keep = (kw["labels"] != 0) | (np.arange(len(kw["labels"])) % 12 < 3)  # category 0 keeps 3 of its 12 prompts
    kw = {k: (v[..., keep] if k in ("base", "labels", "shared", "per_category", "random") else v) for k, v in kw.items()}
    ev = layer_evidence(**kw, n_resamples=200, seed=1, min_prompts=5)
    thin = ev["per_category"][0]
    assert thin["n"] == 3 and thin["thin"] and not thin["counted"] and thin["residual"]["estimate"] is not None
    assert ev["counted"] == list(CATEGORIES[1:])
    decision = LayerRule(min_prompts=5).decide(ev)
    assert decision["verdict"] == "monolithic" and "cyber (3 prompts)" in decision["reasons"][0]
    everyone = layer_evidence(**kw, n_resamples=200, seed=1, min_prompts=2)
    assert everyone["counted"] == list(CATEGORIES) and LayerRule(min_prompts=5).decide(everyone)["verdict"] == \
        "inconclusive"  # counted by the evidence, too thin for the rule
