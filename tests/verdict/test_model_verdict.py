"""The model-level verdict along depth (convergence layer, best layer, summary) and its stability over runs."""
import json

import pytest
from verdict_testlib import block, evidence, uniform

from refusal.errors import ConfigError
from refusal.verdict import LayerRule, model_verdict, stability

RULE = LayerRule()


def layer(index: int, ev: dict) -> tuple:
    return index, RULE.decide(ev), ev


@pytest.fixture(scope="module")
def layers():
    """Evidence of typical layers: early (shared set removes nothing, no dissociation), noisy, monolithic (a weaker
    and a stronger one), modular, mixed (a weaker and a stronger one; every category's own set holds the shared
    part), a bottleneck with a large safe KL."""
    return {"early": evidence(0.95, uniform(0.05)),
            "noisy": evidence(0.35, block(0.6, 0.1), noise=8.0, spread=8.0),
            "mono": evidence(0.1, uniform(0.6), n=40, m=40, seed=2), "mono_strong": evidence(0.02, uniform(0.6)),
            "modular": evidence(0.85, block(0.9, 0.05)),
            "mixed": evidence(0.4, block(1.0, 0.6), n=40, m=40), "mixed_strong": evidence(0.3, block(1.0, 0.6)),
            "kl_bottleneck": evidence(0.02, uniform(0.6), kl=0.5)}


def test_the_fixture_layers_have_the_expected_layer_verdicts(layers):
    got = {k: RULE.decide(ev)["verdict"] for k, ev in layers.items()}
    assert got == {"early": "inconclusive", "noisy": "inconclusive", "mono": "monolithic",
                   "mono_strong": "monolithic", "modular": "modular", "mixed": "mixed", "mixed_strong": "mixed",
                   "kl_bottleneck": "inconclusive"}


def test_monolithic_from_layer_10_converges_at_10(layers):
    out = model_verdict([layer(15, layers["mono_strong"]), layer(5, layers["noisy"]), layer(10, layers["mono"])])
    assert out["verdict"] == "monolithic" and out["convergence_layer"] == 10
    assert [p["layer"] for p in out["profile"]] == [5, 10, 15]
    assert [p["verdict"] for p in out["profile"]] == ["inconclusive", "monolithic", "monolithic"]
    best = out["best_layer"]
    assert best["layer"] == 15 and set(best["shared_share"]) == {"cyber", "fraud", "hate", "violence"}
    assert best["mean_shared_share"] == layers["mono_strong"]["mean_shared_share"]
    assert out["summary"].startswith("Refusal converges at layer 10; at layer 15 one shared part carries 0.9")
    assert "of every category's refusal (mean of 4; lowest: " in out["summary"]
    json.dumps(out, allow_nan=False)


def test_the_convergence_sentence_when_the_best_layer_is_the_first(layers):
    out = model_verdict([layer(3, layers["early"]), layer(12, layers["mono_strong"])])
    assert out["summary"].startswith("Refusal converges at layer 12: one shared part there carries 0.9")


def test_modular_needs_every_layer_to_exclude_a_shared_part(layers):
    out = model_verdict([layer(5, layers["early"]), layer(10, layers["modular"]), layer(15, layers["modular"])])
    assert out["verdict"] == "modular" and out["convergence_layer"] is None
    assert out["summary"].startswith("Refusal stays separate by category: at no analysed layer does a shared part "
                                     "carry more than 0.5 of a category's refusal")
    noisy = model_verdict([layer(5, layers["noisy"]), layer(10, layers["modular"])])
    assert noisy["verdict"] == "inconclusive" and noisy["summary"].startswith("Inconclusive: ")
    nothing = model_verdict([layer(5, layers["early"])])
    assert nothing["verdict"] == "inconclusive" and "no layer is monolithic, mixed or modular" in nothing["summary"]


def test_mixed_when_the_layer_with_most_shared_share_is_mixed(layers):
    out = model_verdict([layer(5, layers["early"]), layer(10, layers["mixed"]), layer(15, layers["mixed_strong"]),
                         layer(20, layers["modular"])])
    assert out["verdict"] == "mixed" and out["convergence_layer"] == 10 and out["best_layer"]["layer"] == 15
    assert out["summary"].startswith("Refusal partly converges at layer 10; at layer 15 a shared part carries 0.7")
    alone = model_verdict([layer(5, layers["early"]), layer(15, layers["mixed_strong"])])
    assert alone["summary"].startswith("Refusal partly converges at layer 15: a shared part there carries 0.7")
    assert "dissociation 0.41" in out["summary"]


def test_a_layer_that_may_hold_an_unconfirmed_bottleneck_makes_the_model_inconclusive(layers):
    out = model_verdict([layer(10, layers["mixed"]), layer(15, layers["kl_bottleneck"])])
    assert out["verdict"] == "inconclusive" and "layers [15] could hold a shared bottleneck" in out["summary"]
    assert model_verdict([layer(10, layers["mixed"])])["verdict"] == "mixed"
    assert model_verdict([layer(10, layers["kl_bottleneck"]), layer(15, layers["mono"])])["verdict"] == "monolithic"


def test_no_layers_or_mixed_thresholds_are_config_errors(layers):
    with pytest.raises(ConfigError, match=r"^verdict: model_verdict needs >= 1 analysed layer; got none$"):
        model_verdict([])
    other = (12, LayerRule(max_kl=0.2).decide(layers["mono"]), layers["mono"])
    with pytest.raises(ConfigError, match=r"^verdict: layers \[12\] were decided with other thresholds than layer 5"):
        model_verdict([layer(5, layers["early"]), other])


def test_agreeing_runs_keep_the_verdict_and_one_dissent_makes_it_inconclusive():
    same = stability([{"verdict": "modular", "run": "seed0"}, {"verdict": "modular", "run": "seed1"},
                      {"verdict": "modular"}])
    assert same["verdict"] == "modular" and same["agreement"] == 1.0 and same["n_runs"] == 3
    assert [r["run"] for r in same["runs"]] == ["seed0", "seed1", 2] and same["summary"] == "All 3 runs say modular."
    split = stability([{"verdict": "modular"}] * 3 + [{"verdict": "mixed"}])
    assert split["verdict"] == "inconclusive" and split["agreement"] == 0.75
    assert split["counts"] == {"modular": 3, "mixed": 1}
    assert split["summary"] == "Runs disagree (3 modular, 1 mixed): inconclusive."
    assert stability([{"verdict": "inconclusive"}] * 2)["verdict"] == "inconclusive"
    with pytest.raises(ConfigError, match=r"^verdict: stability needs >= 1 run's verdict; got none$"):
        stability([])
