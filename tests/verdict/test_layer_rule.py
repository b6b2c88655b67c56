"""The layer rule: planted mechanisms get their label, every threshold is pinned by a case on each side of it, and
bad thresholds are config errors."""
import copy
from dataclasses import asdict

import pytest
from verdict_testlib import block, evidence, mixed, modular, monolithic, synth, uniform, union

from refusal.errors import ConfigError
from refusal.verdict import LayerRule, layer_evidence

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


@pytest.fixture(scope="module")
def uni():
    return union()


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
    assert any(r.startswith("holds: the shared set is one mechanism, not a union of category-specific ones: mean "
                            "dissociation CI") and "within ±0.3" in r for r in out["reasons"])


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
    assert verdict(modu, no_bottleneck_min_residual=lo + 1e-9) == "modular"  # undecided, but own sets spare others
    held = evidence(0.85, block(0.95, 0.3))  # every own set holds a small shared part: only "small" excludes it
    lo = residual_bound(held, "low", min)
    assert verdict(held, no_bottleneck_min_residual=lo) == "modular"
    assert verdict(held, no_bottleneck_min_residual=lo + 1e-9) == "inconclusive"
    ev = evidence(0.6, block(0.95, 0.45), n=40, m=40)  # residual CIs around [0.56, 0.64]; own sets hold the
    assert verdict(ev) == "modular"  # shared part (cross drops ~0.45), so only "small" can exclude a shared carrier
    assert verdict(ev, no_bottleneck_min_residual=0.6) == "inconclusive"  # CIs straddle it: undecided
    assert verdict(ev, no_bottleneck_min_residual=0.7) == "mixed"  # a shared part carrying ~40 % is then partial
    spared = evidence(0.6, block(0.9, 0.05), n=40, m=40)  # own sets spare each other: no shared carrier either way
    assert [verdict(spared, no_bottleneck_min_residual=x) for x in (0.5, 0.6, 0.7)] == ["modular"] * 3


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
    assert verdict(evidence(0.35, block(1.0, 0.6), n_random=0)) == "inconclusive"
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


def test_categories_in_different_regions_are_inconclusive_unless_their_own_sets_spare_each_other():
    ev = evidence([0.02, 0.02, 0.85, 0.85], block(1.0, 0.6))
    out = LayerRule().decide(ev)
    assert out["verdict"] == "inconclusive" and set(out["regions"].values()) == {"bottleneck", "small"}
    assert not out["bottleneck_possible"] and not out["shared_excluded"]
    assert "modular (the categories dissociate and each category's own set spares the others) fails on: " \
           "['own sets spare the others']" in out["reasons"][-1]
    spared = LayerRule().decide(evidence([0.02, 0.02, 0.85, 0.85], block(0.9, 0.05)))
    assert spared["verdict"] == "modular" and spared["shared_excluded"]


def test_a_union_of_small_category_mechanisms_is_modular_not_monolithic(uni):
    out = LayerRule().decide(uni)
    assert out["verdict"] == "modular" and set(out["regions"].values()) == {"bottleneck"}
    held = [r for r in out["reasons"] if r.startswith("holds: ")]  # everything the old rule needed for monolithic
    for text in ("mean safe KL", "the shared set beats random sets", "patching the shared set"):
        assert any(r.startswith(f"holds: {text}") for r in held)
    assert any(r.startswith("fails: the shared set is one mechanism, not a union") for r in out["reasons"])
    assert any(r.startswith("holds: no shared carrier: each category's own set spares the others")
               for r in out["reasons"])
    assert out["reasons"][-1] == ("verdict modular: every condition of modular holds (no shared carrier: each "
                                  "category's own set spares the others)")
    assert out["cross_drop_max"] <= 0.5 and not out["bottleneck_possible"] and out["shared_excluded"]
    assert verdict(evidence(0.35, block(0.6, 0.1))) == "modular"  # a partial pooled set can be a union too


def test_monolithic_needs_no_dissociation_established_by_equivalence(mono):
    d = mono["dissociation"]["mean"]
    edge = max(-d["low"], d["high"])
    assert verdict(mono, dissociation_margin=edge) == "monolithic"
    assert verdict(mono, dissociation_margin=edge - 1e-9) == "inconclusive"
    for side, value in (("high", 0.3), ("low", -0.3)):  # each end of the CI is pinned at ±dissociation_margin
        ev = copy.deepcopy(mono)
        ev["dissociation"]["mean"][side] = value
        assert verdict(ev) == "monolithic"
        ev["dissociation"]["mean"][side] = value + (1e-9 if side == "high" else -1e-9)
        assert verdict(ev) == "inconclusive"
    straddle = evidence(0.02, block(0.9, 0.6))  # mean dissociation CI around [0.28, 0.33]: straddles 0.3
    out = LayerRule().decide(straddle)
    assert set(out["regions"].values()) == {"bottleneck"} and out["verdict"] == "inconclusive"
    assert out["reasons"][-1] == ("verdict inconclusive: every category is bottleneck, but these conditions fail: "
                                  "['no dissociation']; modular (the categories dissociate and each category's own "
                                  "set spares the others) fails on: ['dissociation', 'own sets spare the others']")


def test_monolithic_needs_dissociation_measured(mono):
    ev = copy.deepcopy(mono)
    ev["dissociation"] = None
    assert verdict(ev) == "inconclusive"
    kw = synth(0.02, uniform(0.6))
    kw["per_category"] = None  # no per-category sets: neither a drop matrix nor dissociation
    out = LayerRule().decide(layer_evidence(**kw, n_resamples=1000, seed=1))
    assert out["verdict"] == "inconclusive" and out["cross_drop_max"] is None
    assert any(r == "fails: the shared set is one mechanism, not a union of category-specific ones: dissociation "
                    "not measured, so it cannot be excluded" for r in out["reasons"])
    assert out["reasons"][-1].startswith("verdict inconclusive: every category is bottleneck, but these conditions "
                                         "fail: ['no dissociation']")


def _cross_highs(ev) -> list[tuple[int, int]]:
    """(row, column) of every cross drop D[a, b], a != b, of counted categories."""
    idx = [ev["drop_matrix"]["rows"].index(c) for c in ev["counted"]]
    return [(i, j) for i in idx for j in idx if i != j]


def test_the_cross_drop_route_is_pinned(uni):
    x = LayerRule().decide(uni)["cross_drop_max"]
    assert x == max(uni["drop_matrix"]["high"][i][j] for i, j in _cross_highs(uni))
    assert verdict(uni, no_bottleneck_min_residual=1 - x) == "modular"
    assert verdict(uni, no_bottleneck_min_residual=1 - x + 1e-9) == "inconclusive"
    ev = copy.deepcopy(uni)
    for i, j in _cross_highs(ev):
        ev["drop_matrix"]["high"][i][j] = 0.5  # exactly 1 - no_bottleneck_min_residual: a's set leaves 0.5 of b's
    assert verdict(ev) == "modular" and LayerRule().decide(ev)["cross_drop_max"] == 0.5
    i, j = _cross_highs(ev)[-1]
    ev["drop_matrix"]["high"][i][j] = 0.5 + 1e-9
    assert verdict(ev) == "inconclusive"
    ev["drop_matrix"]["high"][i][j] = None
    out = LayerRule().decide(ev)
    assert out["verdict"] == "inconclusive" and out["cross_drop_max"] is None
    assert any("undefined for" in r for r in out["reasons"])


def test_the_cross_drop_route_uses_counted_categories_only():
    ev = evidence(0.02, block(1.0, 0.0), headroom=[8.0, 8.0, 8.0, 0.0])  # violence: no headroom, wild drop column
    out = LayerRule().decide(ev)
    assert out["counted"] == ["cyber", "fraud", "hate"] and out["verdict"] == "modular"
    assert out["cross_drop_max"] <= 0.5


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
