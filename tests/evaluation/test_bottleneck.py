"""The bottleneck stage (refusal/evaluation/bottleneck.py) on tiny Llamas with a planted refusal mechanism
(bottleneck_testlib.py): a shared mechanism must read monolithic, separate ones modular; the measured statistics must
equal an independent computation; the output is JSON, seeded, with sets of the promised sizes and its figures."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch
import pytest
from omegaconf import OmegaConf

from bottleneck_testlib import HOOKS, K, expected, layer_row, organism
from refusal.errors import ConfigError
from refusal.evaluation.bottleneck import BottleneckSettings, run_bottleneck
from refusal.evaluation.bottleneck_sets import hook_sets, set_size
from refusal.evaluation.nodes import counts_per_hook
from refusal.verdict import LayerRule


@pytest.fixture(scope="module")
def monolithic(tmp_path_factory):
    return organism("monolithic", tmp_path_factory.mktemp("monolithic"))


@pytest.fixture(scope="module")
def modular(tmp_path_factory):
    return organism("modular", tmp_path_factory.mktemp("modular"))


@pytest.mark.parametrize("kind", ["monolithic", "modular"])
def test_measurements_equal_independent_forwards(kind, request):
    fx = request.getfixturevalue(kind)
    for hook in HOOKS:
        ev, want = layer_row(fx.res, hook)["evidence"], expected(fx, hook)
        assert ev["counted"] == fx.res["categories"]
        for p in ev["per_category"]:
            c = p["category"]
            assert p["headroom"]["estimate"] == pytest.approx(want["headroom"][c], abs=1e-3)
            assert p["residual"]["estimate"] == pytest.approx(want["residual"][c], abs=1e-3)
            assert p["random_residual"]["estimate"] == pytest.approx(want["random_residual"][c], abs=1e-3)
        assert np.allclose(ev["drop_matrix"]["estimate"], want["drop"], atol=1e-3)
        assert ev["safe_kl"]["estimate"] == pytest.approx(want["safe_kl"], rel=1e-2, abs=1e-6)
        assert ev["induced_fraction"]["estimate"] == pytest.approx(want["induced_fraction"], abs=1e-3)


# ------------------------------------------------------------------------------------------ the planted verdicts
def test_planted_shared_bottleneck_reads_monolithic(monolithic):
    res = monolithic.res
    row = layer_row(res, HOOKS[1])
    ev = row["evidence"]
    assert row["sets"]["shared"] == [0, 1, 2] and row["decision"]["verdict"] == "monolithic"
    for p in ev["per_category"]:  # the shared set removes each category's refusal; random sets of its size do not
        assert p["residual"]["high"] < 0.2 and p["random_residual"]["estimate"] > 0.5
    assert ev["induced_fraction"]["low"] > 0.5  # patched into safe prompts it moves them to the toxic prompts' level
    assert ev["safe_kl"]["high"] < 0.1
    assert res["model"]["verdict"] == "monolithic" and res["model"]["convergence_layer"] == 3


def test_planted_separate_mechanisms_read_modular(modular):
    res = modular.res
    row = layer_row(res, HOOKS[1])
    ev = row["evidence"]
    assert row["sets"]["shared"] == [0, 3, 6]  # the pooled top-3: the 0.4 feature of each category
    assert row["sets"]["categories"] == {"bomb": [0, 1, 2], "hack": [3, 4, 5], "poison": [6, 7, 8]}
    assert all(abs(p["residual"]["estimate"] - 0.6) < 0.05 for p in ev["per_category"])
    d = np.array(ev["drop_matrix"]["estimate"])
    assert np.allclose(np.diag(d), 1, atol=0.1) and np.abs(d[~np.eye(3, dtype=bool)]).max() < 0.1
    assert row["decision"]["verdict"] == "modular" and res["model"]["verdict"] == "modular"
    # a pooled set large enough to hold every category's mechanism would pass for a bottleneck: k is the decision
    assert next(c for c in row["curve"] if c["k"] == 9)["mean_residual"]["estimate"] < 0.2


# ------------------------------------------------------------------------------------------ shape of the output
def test_runs_end_to_end_and_returns_json(monolithic):
    res = monolithic.res
    assert json.loads(json.dumps(res, allow_nan=False)) == res
    assert [r["hook"] for r in res["layers"]] == list(HOOKS) and [r["layer"] for r in res["layers"]] == [1, 3]
    assert res["categories"] == ["bomb", "hack"] and any("lone" in n and ">= 2" in n for n in res["notes"])
    for r in res["layers"]:
        ev = r["evidence"]
        assert ev["n_prompts"] == {"toxic": {"bomb": 7, "hack": 7}, "safe": 7} and ev["n_random_sets"] == 4
        assert [(p["category"], p["n"]) for p in ev["per_category"]] == [("bomb", 7), ("hack", 7)]
        assert [c["k"] for c in r["curve"]] == [1, 3, 9]


def test_sets_have_k_features_at_their_hook_only(monolithic):
    a, space = monolithic.inputs.attributions, monolithic.setup.space
    ies = {"all": a["ie"].double().mean(0)}
    for c in ("bomb", "hack"):
        ies[c] = a["ie"][[i for i, r in enumerate(a["rows"]) if r["category"] == c]].double().mean(0)
    for h, hook in enumerate(HOOKS):
        sets = hook_sets(space, h, K, ies, ["bomb", "hack"], 4, 0)
        for mask in [sets.shared, *sets.categories, *sets.random]:
            counts = counts_per_hook(space, mask)
            assert counts[hook] == {"features": K, "error": 0}
            assert all(v == {"features": 0, "error": 0} for other, v in counts.items() if other != hook)
        row = layer_row(monolithic.res, hook)
        assert row["k"] == K and len(set(row["sets"]["shared"])) == K
        assert [len(set(v)) for v in row["sets"]["categories"].values()] == [K, K]
        assert [len(set(v)) for v in row["sets"]["random"]] == [K] * 4
    assert (set_size(0.25, 16), set_size(40, 16), set_size(0.01, 16)) == (4, 16, 1)


def test_figures_are_written(modular):
    plots = modular.res["plots"]
    assert set(plots) == {"residual_heatmap", "dissociation", "best_layer_bars"}
    for path in plots.values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_seeded_output_is_identical(modular):
    again = run_bottleneck(modular.ctx, modular.setup, modular.inputs, modular.settings, modular.out / "again")
    strip = lambda r: json.dumps({k: v for k, v in r.items() if k != "plots"}, sort_keys=True)  # noqa: E731
    assert strip(again) == strip(modular.res)


def test_without_safe_prompts_the_stage_says_why(monolithic):
    ctx = replace(monolithic.ctx, prompts=monolithic.ctx.prompts.filter(label="toxic"))
    res = run_bottleneck(ctx, monolithic.setup, monolithic.inputs, monolithic.settings, monolithic.out / "none")
    assert res["layers"] == [] and res["model"]["verdict"] == "inconclusive" and "0 safe" in res["model"]["reason"]


def test_settings_from_config():
    rule = {"bottleneck_max_residual": 0.2, "no_bottleneck_min_residual": 0.5, "max_kl": 0.1, "min_induced": 0.5,
            "dissociation_margin": 0.3, "min_pair_fraction": 0.5, "min_prompts": 5}
    node = {"size": 16, "curve_sizes": [4, 0.01], "n_random": 5, "rule": rule}
    s = BottleneckSettings.from_config(OmegaConf.create(node))
    assert s == BottleneckSettings(16, (4, 0.01), 5, LayerRule(**rule)) and s.describe()["rule"] == rule
    for bad in ({"size": 0}, {"size": 1.5}, {"size": True}, {"n_random": 0}, {"curve_sizes": 4},
                {"rule": {**rule, "extra": 1}}, {"rule": {**rule, "max_kl": -1}}):
        with pytest.raises(ConfigError):
            BottleneckSettings.from_config(OmegaConf.create({**node, **bad}))


def test_direction_means_pool_the_categories_into_the_toxic_mean(modular, monkeypatch):
    """The toxic mean is pooled from the per-category prompt groups (each discovery prompt forwarded once per setup,
    shared with the ablation values); it must equal the mean over every toxic discovery prompt computed directly."""
    from refusal.circuit.patch import mean_values
    from refusal.evaluation.bottleneck_directions import discovery_means
    setup = modular.setup
    toxic = setup.split.filter(label="toxic")
    forwarded = []
    values = setup.cm.values
    monkeypatch.setattr(setup.cm, "values", lambda enc: forwarded.append(enc.input_ids.shape[0]) or values(enc))
    monkeypatch.setattr(setup, "sums", {})  # as a fresh setup's, before any stage used them
    means, _ = discovery_means(setup, [])
    assert sum(forwarded) == len(setup.split.filter(label=["toxic", "safe"]))  # each prompt once
    n_first = len(forwarded)
    discovery_means(setup, [])
    assert len(forwarded) == n_first  # the second call reads the setup's sums
    monkeypatch.setattr(setup.cm, "values", values)
    direct = mean_values(setup.cm, [r.prompt for r in toxic])
    assert set(toxic.categories()) < set(means)
    for hook in HOOKS:
        f, e = direct[hook]
        expected = (setup.ablator.saes[hook].decode(f[0]) + e[0]).float().cpu()
        assert means["toxic"][hook].abs().max() > 0
        torch.testing.assert_close(means["toxic"][hook], expected, rtol=1e-5, atol=1e-5)


def test_a_stage_with_too_few_prompts_is_reported_not_crashed():
    """Too few held-out prompts: the stage's inconclusive result (no layers) renders in the report with its reason
    and the model rule."""
    from refusal.evaluation.bottleneck import _empty
    from refusal.evaluation.bottleneck_section import bottleneck_section
    from refusal.verdict.profile import MODEL_RULE
    section = bottleneck_section({"status": "done", **_empty(BottleneckSettings(), "0 toxic categories", [])})
    text = " ".join(str(getattr(b, "text", "")) for b in section.blocks)
    assert "Why: 0 toxic categories." in text and MODEL_RULE in text
