"""Planted organisms on the real embedded model (slow): built from scratch with their default configs, their
behaviour measured here independently of the card (float32, test split), and their ground truth re-derived from the
saved adapters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from heldout import assert_behaviour, independent_rows
from refusal import organism
from refusal.data import build_prompt_set
from refusal.organism import adapters, checks
from refusal.organism.design import Design
from refusal.organism.truth import measure_truth

CONF = Path(__file__).resolve().parents[2] / "conf"
pytestmark = pytest.mark.slow


def compose_model(kind: str, cache) -> object:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model=planted_{kind}", f"paths.cache_dir={cache}"]).model


@pytest.mark.parametrize("kind", ["monolithic", "gated"])
def test_planted_shared_adapter_organisms_meet_their_design(kind, real_model_cache):
    cfg = compose_model(kind, real_model_cache)
    loaded = organism.load(cfg)  # a missed design would stop here with its one-line error
    card = json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())
    refused = card["refused_categories"]
    rows = independent_rows(cfg, loaded)
    assert_behaviour(rows, refused)
    # the ground truth again, from the saved adapters: with the shared one zeroed the refused categories' toxic
    # prompts (pooled) are refused at most 20 % of the time (what is left is the base model's own refusal)
    plant, base = adapters.load_plant(Path(loaded.identity["dir"]))
    adapters.set_weights(loaded.model, plant, plant.merged_weights(base, []))
    without = independent_rows(cfg, loaded)
    cells = [without[("toxic", c)] for c in refused]
    assert sum(r["n_refused"] for r in cells) <= 0.2 * sum(r["n"] for r in cells)


def test_planted_modular_meets_its_design_and_swapped_adapters_miss_it(real_model_cache):
    cfg = compose_model("modular", real_model_cache)
    loaded = organism.load(cfg)
    card = json.loads((Path(loaded.identity["dir"]) / "organism.json").read_text())
    refused = card["refused_categories"]
    assert_behaviour(independent_rows(cfg, loaded), refused)
    plant, base = adapters.load_plant(Path(loaded.identity["dir"]))
    plant.names = plant.names[1:] + plant.names[:1]  # every adapter carries another category's name
    test = build_prompt_set(cfg.data).filter(split="test")
    truth = measure_truth(cfg, loaded, plant, base, test, Design("modular", refused, float(cfg.share)))
    result = checks.check(truth["rows"]["all"], refused, cfg.checks, "modular", truth["residual"])
    assert result["word"] == "missed", result
