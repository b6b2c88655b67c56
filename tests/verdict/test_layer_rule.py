"""The layer rule: planted mechanisms get their label, every threshold is pinned by a case on each side of it, and
bad thresholds are config errors."""
import copy
from dataclasses import asdict

import pytest
from verdict_testlib import block, evidence, mixed, modular, monolithic, uniform

from refusal.errors import ConfigError
from refusal.verdict import LayerRule

DEFAULTS = {"bottleneck_max_residual": 0.2, "no_bottleneck_min_residual": 0.5, "max_kl": 0.1, "min_induced": 0.5,
            "dissociation_margin": 0.3, "min_pair_fraction": 0.5, "min_prompts": 5}


@pytest.fixture(scope="module")
def mono():
    return monolithic()


@pytest.fixture(scope="module")
def modu():
    return modular()


@pytest.fixture(scope="module")
def mix():
    return mixed()


def verdict(ev, **thresholds) -> str:
    return LayerRule(**thresholds).decide(ev)["verdict"]


def residual_bound(ev, key: str, pick) -> float:
    return pick(p["residual"][key] for p in ev["per_category"] if p["counted"])


def test_the_defaults_are_the_documented_ones():
    assert asdict(LayerRule()) == DEFAULTS


def test_planted_mechanisms_get_their_label(mono, modu, mix):
    assert [verdict(e) for e in (mono, modu, mix)] == ["monolithic", "modular", "mixed"]
    out = LayerRule().decide(mono)
    assert set(out) >= {"verdict", "reasons", "thresholds", "rule"} and out["thresholds"] == DEFAULTS
    assert out["regions"] == dict.fromkeys(["cyber", "fraud", "hate", "violence"], "bottleneck")
    assert out["reasons"][-1] == "verdict monolithic: every condition of monolithic holds"
    assert any("equivalent to no dissociation: yes" in r for r in out["reasons"])


def test_noise_and_too_few_prompts_are_inconclusive():
    noisy = evidence(0.35, block(0.6, 0.1), noise=8.0, spread=8.0)
    assert verdict(noisy) == "inconclusive"
    assert "resolve residual refusal to ±" in LayerRule().decide(noisy)["reasons"][-1]
    few = monolithic(n=4)
    assert verdict(few) == "inconclusive" and verdict(few, min_prompts=4) == "monolithic"
    assert any(r.startswith("fails: >= 5 prompts") for r in LayerRule().decide(few)["reasons"])


def test_min_prompts_is_pinned(mono):
    assert verdict(mono, min_prompts=12) == "monolithic" and verdict(mono, min_prompts=13) == "inconclusive"


def test_a_category_without_headroom_is_not_counted():
    ev = evidence(0.02, uniform(0.6), headroom=[8.0, 8.0, 8.0, 0.0])
    out = LayerRule().decide(ev)
    assert out["counted"] == ["cyber", "fraud", "hate"] and out["verdict"] == "monolithic"
    assert "not counted: violence (headroom" in out["reasons"][0]


def test_fewer_than_two_counted_categories_is_inconclusive():
    ev = evidence(0.02, uniform(0.6), headroom=[8.0, 0.0, 0.0, 0.0])
    out = LayerRule().decide(ev)
    assert out["counted"] == ["cyber"] and out["verdict"] == "inconclusive"
    assert out["reasons"][0].startswith("fails: 1 counted categories")


def test_bottleneck_threshold_is_pinned_at_the_upper_ci(mono):
    hi = residual_bound(mono, "high", max)
    est = max(p["residual"]["estimate"] for p in mono["per_category"])
    assert verdict(mono, bottleneck_max_residual=hi) == "monolithic"
    assert verdict(mono, bottleneck_max_residual=hi - 1e-9) == "inconclusive"
    assert verdict(mono, bottleneck_max_residual=(hi + est) / 2) == "inconclusive"  # the estimate alone is not enough


def test_a_weaker_bottleneck_flips_with_the_default_threshold():
    ev = evidence(0.12, uniform(0.6), n=40, m=40)  # residual CIs around [0.07, 0.17]
    assert 0.15 < residual_bound(ev, "high", max) < 0.2
    assert verdict(ev) == "monolithic" and verdict(ev, bottleneck_max_residual=0.15) == "inconclusive"


def test_no_bottleneck_threshold_is_pinned_at_the_lower_ci(modu):
    lo = residual_bound(modu, "low", min)
    assert verdict(modu, no_bottleneck_min_residual=lo) == "modular"
    assert verdict(modu, no_bottleneck_min_residual=lo + 1e-9) == "inconclusive"
    ev = evidence(0.6, block(0.9, 0.05), n=40, m=40)  # residual CIs around [0.56, 0.64]
    assert verdict(ev) == "modular"
    assert verdict(ev, no_bottleneck_min_residual=0.6) == "inconclusive"  # CIs straddle it: undecided
    assert verdict(ev, no_bottleneck_min_residual=0.7) == "mixed"  # a shared part carrying ~40 % is then partial


def test_the_partial_region_is_strictly_between_the_thresholds(mix):
    lo, hi = residual_bound(mix, "low", min), residual_bound(mix, "high", max)
    assert verdict(mix, bottleneck_max_residual=lo - 1e-9) == "mixed"
    assert verdict(mix, bottleneck_max_residual=lo) == "inconclusive"
    assert verdict(mix, no_bottleneck_min_residual=hi + 1e-9) == "mixed"
    assert verdict(mix, no_bottleneck_min_residual=hi) == "inconclusive"


def test_kl_threshold_is_pinned(mono, mix):
    kl = mono["safe_kl"]["high"]
    assert verdict(mono, max_kl=kl) == "monolithic" and verdict(mono, max_kl=kl - 1e-9) == "inconclusive"
    kl = mix["safe_kl"]["high"]
    assert verdict(mix, max_kl=kl) == "mixed" and verdict(mix, max_kl=kl - 1e-9) == "inconclusive"
    assert verdict(evidence(0.02, uniform(0.6), kl=0.3)) == "inconclusive"


def test_a_large_kl_does_not_block_modular():
    assert verdict(evidence(0.85, block(0.9, 0.05), kl=0.3)) == "modular"


def test_induced_threshold_is_pinned_and_unmeasured_induction_is_not_required(mono):
    low = mono["induced_fraction"]["low"]
    assert verdict(mono, min_induced=low) == "monolithic" and verdict(mono, min_induced=low + 1e-9) == "inconclusive"
    assert verdict(evidence(0.02, uniform(0.6), induced=0.2)) == "inconclusive"
    assert verdict(evidence(0.02, uniform(0.6), induced=None)) == "monolithic"


def test_the_shared_set_must_beat_random_sets(mono):
    assert verdict(evidence(0.02, uniform(0.6), random_residual=0.02)) == "inconclusive"
    assert verdict(evidence(0.02, uniform(0.6), n_random=0)) == "inconclusive"
    assert verdict(evidence(0.35, block(0.6, 0.1), n_random=0)) == "inconclusive"
    assert verdict(evidence(0.85, block(0.9, 0.05), n_random=0)) == "modular"  # modular rests on no removal
    ev = copy.deepcopy(mono)
    ev["per_category"][1]["random_gap"]["low"] = 0.0
    assert verdict(ev) == "inconclusive"
    ev["per_category"][1]["random_gap"]["low"] = 1e-9
    assert verdict(ev) == "monolithic"


def test_dissociation_margin_is_pinned(modu, mix):
    for ev, label in ((modu, "modular"), (mix, "mixed")):
        low = ev["dissociation"]["mean"]["low"]
        assert verdict(ev, dissociation_margin=low, min_pair_fraction=0.0) == label
        assert verdict(ev, dissociation_margin=low + 1e-9, min_pair_fraction=0.0) == "inconclusive"
    assert verdict(evidence(0.85, block(0.35, 0.05))) == "inconclusive"  # own-category drop too small: no dissociation
    assert verdict(evidence(0.85, block(0.35, 0.05)), dissociation_margin=0.2) == "modular"


def test_pair_fraction_is_pinned(modu):
    lows = sorted(p["low"] for p in modu["dissociation"]["pairs"])
    mean_low = modu["dissociation"]["mean"]["low"]
    k = max(i for i, lo in enumerate(lows) if lo <= mean_low)  # margin lows[k]: pairs k .. 5 reach it
    assert 1 <= k < len(lows) - 1 and lows[k - 1] < lows[k]
    fraction = (len(lows) - k) / len(lows)
    out = LayerRule(dissociation_margin=lows[k], min_pair_fraction=fraction).decide(modu)
    assert out["verdict"] == "modular" and out["dissociation_pair_fraction"] == fraction
    assert verdict(modu, dissociation_margin=lows[k], min_pair_fraction=fraction + 1e-9) == "inconclusive"


def test_no_dissociation_beside_a_small_shared_part_is_inconclusive():
    assert verdict(evidence(0.85, uniform(0.3))) == "inconclusive"
    assert verdict(evidence(0.35, uniform(0.3))) == "inconclusive"


def test_categories_in_different_regions_are_inconclusive():
    ev = evidence([0.02, 0.02, 0.85, 0.85], block(0.9, 0.05))
    out = LayerRule().decide(ev)
    assert out["verdict"] == "inconclusive" and set(out["regions"].values()) == {"bottleneck", "small"}
    assert not out["bottleneck_possible"] and not out["shared_excluded"]


@pytest.mark.parametrize("kw,message", [
    ({"bottleneck_max_residual": 1.5},
     r"^verdict\.bottleneck_max_residual=1\.5 is not valid; use a number in \[0, 1\]$"),
    ({"max_kl": -0.1}, r"^verdict\.max_kl=-0\.1 is not valid; use a number >= 0$"),
    ({"dissociation_margin": 0.0}, r"^verdict\.dissociation_margin=0\.0 is not valid; use a number in \(0, 1\]$"),
    ({"min_pair_fraction": float("nan")}, r"^verdict\.min_pair_fraction=nan is not valid"),
    ({"min_induced": True}, r"^verdict\.min_induced=True is not valid"),
    ({"min_prompts": 1}, r"^verdict\.min_prompts=1 is not valid; use an int >= 2$"),
    ({"bottleneck_max_residual": 0.5, "no_bottleneck_min_residual": 0.5},
     r"^verdict\.bottleneck_max_residual=0\.5 is not below no_bottleneck_min_residual=0\.5; it must be$"),
])
def test_bad_thresholds_are_one_line_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message) as err:
        LayerRule(**kw)
    assert "\n" not in str(err.value)
