"""The bottleneck stage on a real discover run (train dir built in code, discover.py's task in-process) through
build_circuit_setup, as evaluate.py runs it: JSON out, every category measured or dropped with a note, the IE ranked
from the run's per-prompt attributions, and the circuit JSONs' attributions when the run kept none."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from test_evaluate_entry import HOOKS, _train_dir  # the same train dir built in code

from refusal import organism
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import resolve_refusal_tokens
from refusal.evaluation.bottleneck import BottleneckSettings, run_bottleneck
from refusal.evaluation.circuit_setup import build_circuit_setup
from refusal.evaluation.context import EvalContext
from refusal.evaluation.inputs import load_inputs
from refusal.model.chat import ChatFormatter
from refusal.tasks.discover import discover

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bottleneck_discover")
    train, disc = _train_dir(root), root / "discover"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("discover", overrides=["model=tiny_llama", "logger=csv", f"paths.output_dir={disc}",
                                             f"paths.root_dir={disc}", f"train_dir={train}",
                                             "circuit.statistics.n_permutations=20", "circuit.statistics.n_resamples=0",
                                             "circuit.separate_safe_toxic=false", "circuit.edge_threshold=1.0"])
    discover(cfg)
    inputs = load_inputs(str(train), str(disc))
    loaded = organism.load(cfg.model)
    fmt = ChatFormatter(loaded.tokenizer, loaded.system_prompt, 256)
    setup = build_circuit_setup(inputs, loaded, fmt, "mean_safe", 8)
    ids = resolve_refusal_tokens(loaded.tokenizer, loaded.refusal_tokens)
    ctx = EvalContext(loaded, fmt, inputs.prompts.filter(split="test"), None, ids, 8, 1,
                      Bootstrap(100, 0.95, "percentile"), 0, root / "eval")
    return SimpleNamespace(inputs=inputs, setup=setup, ctx=ctx, out=root / "eval")


def test_a_discover_run_evaluates(run):
    s = BottleneckSettings(size=0.125, curve_sizes=(1,), n_random=2)
    res = run_bottleneck(run.ctx, run.setup, run.inputs, s, run.out)
    assert json.loads(json.dumps(res, allow_nan=False)) == res
    assert res["categories"] == ["cyber", "fraud", "violence"] and set(res["ie_source"].values()) == {"attributions"}
    assert [r["hook"] for r in res["layers"]] == HOOKS and all(r["k"] == 4 for r in res["layers"])
    for r in res["layers"]:
        assert r["evidence"]["n_prompts"] == {"toxic": {"cyber": 2, "fraud": 2, "violence": 2}, "safe": 2}
        assert [c["k"] for c in r["curve"]] == [1, 4]
    assert res["model"]["verdict"] in ("monolithic", "modular", "mixed", "inconclusive") and len(res["plots"]) == 3


def test_without_attributions_the_circuit_jsons_rank(run):
    bare = SimpleNamespace(attributions=None, circuits=run.inputs.circuits, prompts=run.inputs.prompts,
                           discovery=run.inputs.discovery)
    res = run_bottleneck(run.ctx, run.setup, bare, BottleneckSettings(size=2, curve_sizes=(), n_random=1),
                         run.out / "bare")
    assert set(res["ie_source"].values()) == {"circuit_json"}
    for r in res["layers"]:
        assert len(r["sets"]["shared"]) == 2 and all(len(v) == 2 for v in r["sets"]["categories"].values())
