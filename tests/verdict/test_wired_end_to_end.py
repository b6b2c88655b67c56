"""discover.py's and evaluate.py's tasks recover the verdict of tiny models whose refusal is wired by hand
(refusal/organism/wired.py), with an exact SAE at every hook: one shared writer → monolithic, converging at the
writer's layer; one writer per category → modular; one shared writer for two of three categories (the third
answered) → monolithic over the two it refuses. Blind: the runs see a Hugging Face model directory and a train dir, never the wiring."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from refusal.organism.wired import MARKERS, WRITER_LAYER, exact_train_dir, save_wired, wired_prompts
from refusal.tasks.discover import discover
from refusal.tasks.evaluate import evaluate

CONF = Path(__file__).resolve().parents[2] / "conf"
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]  # before, at and after the writer's layer


def compose_task(task: str, out: Path, model: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(task, overrides=["model=hf", f"model.path={model}", f"model.name={model.name}",
                                        "model.device=cpu", "logger=csv", f"paths.output_dir={out}",
                                        f"paths.root_dir={out}", *overrides])


@pytest.fixture(scope="module", params=["monolithic", "modular", "gated"])
def run(request, tmp_path_factory):
    design = request.param
    root = tmp_path_factory.mktemp(f"wired_{design}")
    model = save_wired(root / f"wired-{design}", design)
    train = exact_train_dir(root / "train", wired_prompts(), HOOKS, model.name)
    disc, ev = root / "discover", root / "evaluate"
    discover(compose_task("discover", disc, model, f"train_dir={train}", "circuit.statistics.n_permutations=20",
                          "circuit.statistics.n_resamples=0", "circuit.separate_safe_toxic=false",
                          "circuit.edge_threshold=1.0"))
    evaluate(compose_task("evaluate", ev, model, f"train_dir={train}", f"discover_dir={disc}",
                          "evaluation.stages=[bottleneck]", "evaluation.bottleneck.size=4",
                          "evaluation.bottleneck.n_random=5", "evaluation.bottleneck.curve_sizes=[]",
                          "evaluation.bootstrap.n_resamples=500"))
    return design, json.loads((ev / "verdict.json").read_text()), json.loads((ev / "bottleneck.json").read_text())


def test_the_wired_verdict_is_recovered(run):
    design, verdict, bottleneck = run
    layers = {r["layer"]: r["decision"]["verdict"] for r in bottleneck["layers"]}
    want = {"gated": "monolithic"}.get(design, design)
    assert verdict["verdict"] == want, (layers, verdict)
    assert verdict["by_basis"] == {"features": want, "directions": want}  # the exact SAE and the directions agree
    assert [r["decision"]["verdict"] for r in bottleneck["directions"]["layers"]] == list(layers.values())
    counted = {r["layer"]: r["decision"]["counted"] for r in bottleneck["layers"]}
    assert set(map(tuple, counted.values())) == {tuple(MARKERS)[:2] if design == "gated" else tuple(MARKERS)}
    if design == "modular":
        assert set(layers.values()) == {"modular"}
    else:  # recognition is per category before the writer, shared from the writer's layer on
        assert layers == {0: "modular", 1: "monolithic", 2: "monolithic"} and WRITER_LAYER == 1
        assert verdict["convergence_layer"] == WRITER_LAYER
