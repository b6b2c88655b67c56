"""Whether the base model separates a selective design's categories, measured before training: the probe's
cross-validated catch rate at a false-alarm bound, and the build that stops when the categories are inseparable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refusal import organism
from refusal.errors import ConfigError
from refusal.organism import planted, separability as sep
from test_planted import planted_cfg


def test_tpr_at_fpr_is_the_best_threshold_within_the_false_alarm_bound():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 4.5, 0.5, 0.0, -1.0, -2.0])
    positive = np.array([True] * 5 + [False] * 5)
    # negatives 4.5, 0.5, 0, -1, -2: flagging none catches 5.0 only; flagging one (20 %) catches every positive > 0.5
    assert sep.tpr_at_fpr(scores, positive, 0.0) == pytest.approx(0.2)
    assert sep.tpr_at_fpr(scores, positive, 0.2) == pytest.approx(1.0)
    assert sep.tpr_at_fpr(scores, positive, 0.19) == pytest.approx(0.2)
    assert sep.tpr_at_fpr(scores, ~positive, 0.2) == pytest.approx(0.2)  # reversed roles: only 4.5 beats 4.0


def test_folds_hold_every_category_in_proportion():
    cats = ["a"] * 10 + ["b"] * 5 + ["c"] * 7
    fold = sep.folds_by_category(cats, 5, seed=0)
    for c in "abc":
        counts = np.bincount(fold[np.array(cats) == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert not np.array_equal(fold, sep.folds_by_category(cats, 5, seed=1))


def features(shift: float, seed: int = 0) -> tuple[dict[int, torch.Tensor], list[str]]:
    """Gaussian features for 3 categories x 30 prompts; category ``a`` moved by ``shift`` along one dim at layer 2."""
    g = torch.Generator().manual_seed(seed)
    cats = [c for c in "abc" for _ in range(30)]
    x = torch.randn(len(cats), 8, generator=g, dtype=torch.float64)
    moved = x.clone()
    moved[:30, 3] += shift
    return {1: x, 2: moved}, cats


def test_a_gate_is_separable_only_where_a_probe_tells_its_categories_apart():
    feats, cats = features(shift=6.0)
    got = sep.separability(feats, cats, {"a": ["a"], "b": ["b"]}, refuse_min=0.9, max_fpr=0.2, seed=0)
    a, b = got["gates"]["a"], got["gates"]["b"]
    assert a["separable"] and a["best_layer"] == 2 and a["tpr"] >= 0.9 and a["tpr_by_layer"][1] < 0.9
    assert not b["separable"] and b["tpr"] < 0.9  # b is noise against a and c
    assert got["word"] == "inseparable" and (a["n_positive"], a["n_negative"]) == (30, 60)
    only_a = sep.separability(feats, cats, {"a": ["a"]}, 0.9, 0.2, 0)
    assert only_a["word"] == "separable"
    assert sep.gates("gated", ["a", "b"]) == {"a+b": ["a", "b"]}
    assert sep.gates("modular", ["a", "b"]) == {"a": ["a"], "b": ["b"]} and sep.gates("monolithic", ["a"]) == {}


def noise_features(model, fmt, records, layers, batch_size=16):
    g = torch.Generator().manual_seed(0)
    return {layer: torch.randn(len(records), 6, generator=g, dtype=torch.float64) for layer in layers}


def category_features(model, fmt, records, layers, batch_size=16):
    names = sorted({r.category for r in records})
    onehot = torch.tensor([[float(r.category == c) for c in names] for r in records], dtype=torch.float64)
    return {layer: onehot for layer in layers}


def test_a_selective_build_on_inseparable_categories_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(planted, "prompt_features", noise_features)
    trained = []
    monkeypatch.setattr(planted, "fine_tune", lambda *a, **k: trained.append(1) or [])
    cfg = planted_cfg(tmp_path, "gated", accept_design_miss=False)
    with pytest.raises(ConfigError, match=r"model.categories=\['violence'\]: the base model does not separate "
                                          r"violence .*accept_design_miss=true") as e:
        organism.load(cfg)
    assert "\n" not in str(e.value) and not trained
    assert not [p for p in Path(cfg.cache_dir).glob("*") if (p / "organism.json").exists()]


def test_the_card_records_how_separable_the_categories_were(tmp_path, monkeypatch):
    monkeypatch.setattr(planted, "prompt_features", category_features)
    cfg = planted_cfg(tmp_path, "gated", accept_design_miss=True)
    loaded = organism.load(cfg)
    card = json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())
    got = card["separability"]
    assert got["word"] == "separable" and got["gates"]["violence"]["tpr"] == 1.0
    assert [int(k) for k in got["gates"]["violence"]["tpr_by_layer"]] == card["design"]["plant"]["layers"]
    assert "Separability before training" in (Path(loaded.identity["dir"]) / "ORGANISM.md").read_text()


class Trained(Exception):
    """Raised in place of training: the build got past the separability check."""


def test_the_false_alarm_bound_is_the_configs_probe_max_fpr(tmp_path, monkeypatch):
    """Noise features catch the gate's prompts only where the bound lets a threshold flag every other category: at
    probe_max_fpr 1 the build goes on to train, at the default it stops with a message naming the bound."""
    monkeypatch.setattr(planted, "prompt_features", noise_features)

    def train(*a, **k):
        raise Trained

    monkeypatch.setattr(planted, "fine_tune", train)
    (tmp_path / "loose").mkdir()
    with pytest.raises(Trained):
        organism.load(planted_cfg(tmp_path / "loose", "gated", accept_design_miss=False, checks={"probe_max_fpr": 1.0}))
    strict = planted_cfg(tmp_path, "gated", accept_design_miss=False)
    assert strict.checks.probe_max_fpr == 0.05 < strict.checks.answer_max  # stricter than the design's own bound
    with pytest.raises(ConfigError, match=r"at <= 5% false alarms"):
        organism.load(strict)


def test_probe_max_fpr_out_of_range_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.checks.probe_max_fpr"):
        organism.load(planted_cfg(tmp_path, "gated", checks={"probe_max_fpr": 1.5}))
