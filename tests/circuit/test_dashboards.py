"""Feature dashboards (refusal/circuit/dashboards.py, dashboard_stats.py, dashboard_run.py): hand-computed statistics
on a synthetic store, the top example at the argmax token, logit effects against a direct product, error nodes
skipped, determinism, the store and the forward fallback agreeing, reuse, and the config keys."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from refusal.activations import CollectionPlan, collect_activations
from refusal.activations.store import ActivationStore, shard_name, write_manifest, write_shard
from refusal.circuit.config import settings_from
from refusal.circuit.dashboard_run import write_run_dashboards
from refusal.circuit.dashboard_stats import DashboardSettings, store_batches
from refusal.circuit.dashboards import build_dashboards, logit_effects, node_key
from refusal.circuit.splice import HookedSAE
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter
from refusal.sae.model import SparseAutoencoder
from refusal.utils.io import write_json

REPO = Path(__file__).resolve().parents[2]
H = "blocks.1.hook_resid_post"
D = 64
ROWS = [  # per prompt (id, category, label): activations of features 0 and 1 at positions 5, 6, 7
    ("p0", "cyber", "toxic", [[1.0, 0.0], [3.0, 0.0], [3.0, 2.0]]),
    ("p1", "cyber", "toxic", [[0.0, 0.0], [0.5, 0.0], [0.0, 0.0]]),
    ("p2", "cyber", "safe", [[4.0, 0.0], [0.0, 0.0], [0.0, 1.0]]),
    ("p3", "fraud", "toxic", [[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]),
]
CIRCUITS = [
    {"kind": "toxic", "category": "cyber", "nodes": [
        {"id": f"{H}/0@-1", "hook": H, "feature": 0, "attribution": 0.5},
        {"id": f"{H}/0@-2", "hook": H, "feature": 0, "attribution": 0.25},
        {"id": f"{H}/error", "hook": H, "feature": "error", "attribution": 0.1}]},
    {"kind": "toxic", "category": "fraud", "nodes": [{"id": f"{H}/1", "hook": H, "feature": 1, "attribution": -2.0}]},
]
SETTINGS = DashboardSettings(True, 3, 5)


def identity_sae(seed: int = 0) -> SparseAutoencoder:
    """ReLU SAE whose feature j is relu(x_j) (j < 4); random unit decoder rows."""
    torch.manual_seed(seed)
    sae = SparseAutoencoder(D, 4, "relu_l1")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:4, :4] = torch.eye(4)
    return sae.eval().requires_grad_(False)


def _batch(rows=ROWS):
    x = torch.zeros(3 * len(rows), D)
    for p, (*_, acts) in enumerate(rows):
        x[3 * p: 3 * p + 3, :2] = torch.tensor(acts)
    return {H: x}, torch.arange(len(rows)).repeat_interleave(3), torch.tensor([5, 6, 7] * len(rows))


def _rows(rows=ROWS):
    return [{"id": i, "category": c, "label": lb, "split": "train"} for i, c, lb, _ in rows]


def _build(tiny, batches, sae=None, rows=ROWS):
    saes = {H: HookedSAE(H, sae or identity_sae())}
    return build_dashboards(CIRCUITS, saes, tiny.model, tiny.tokenizer, lambda pid: [10 + int(pid[1:])] * 9,
                            _rows(rows), batches, SETTINGS, {"source": {"kind": "test"}})


def test_frequency_and_mean_per_category_and_label_by_hand(tiny):
    d = _build(tiny, [_batch()])
    f0 = d["nodes"][node_key(H, 0)]
    groups = {(g["category"], g["label"]): g for g in f0["by_group"]}
    assert list(groups) == [("cyber", "safe"), ("cyber", "toxic"), ("fraud", "toxic")]
    assert groups[("cyber", "toxic")] == {"category": "cyber", "label": "toxic", "n_tokens": 6,
                                          "frequency": pytest.approx(4 / 6), "mean": pytest.approx(7.5 / 6)}
    assert groups[("cyber", "safe")]["frequency"] == pytest.approx(1 / 3)
    assert groups[("cyber", "safe")]["mean"] == pytest.approx(4 / 3)
    assert groups[("fraud", "toxic")]["mean"] == pytest.approx(2 / 3)
    assert f0["activation"] == {"n_tokens": 12, "frequency": pytest.approx(6 / 12), "mean": pytest.approx(13.5 / 12)}
    f1 = d["nodes"][node_key(H, 1)]
    assert f1["activation"]["frequency"] == pytest.approx(2 / 12)
    assert d["n_tokens"] == 12


def test_top_examples_are_the_argmax_tokens_of_distinct_prompts(tiny):
    d = _build(tiny, [_batch()])
    ex = d["nodes"][node_key(H, 0)]["top_examples"]
    # p2 peaks at 4 (position 5); p0 at 3 twice (positions 6 and 7): the first; p3 at 2; p1 (0.5) is 4th of top 3
    assert [(e["prompt_id"], e["activation"], e["token_index"]) for e in ex] == [
        ("p2", 4.0, 5), ("p0", 3.0, 6), ("p3", 2.0, 7)]
    ex1 = d["nodes"][node_key(H, 1)]["top_examples"]
    assert [(e["prompt_id"], e["token_index"]) for e in ex1] == [("p0", 7), ("p2", 7)]  # never-active prompts left out
    assert sorted(d["prompts"]) == ["p0", "p2", "p3"]
    assert d["prompts"]["p2"]["tokens"] == [tiny.tokenizer.decode([12])] * 9


def test_a_prompt_split_over_batches_keeps_its_overall_max(tiny):
    acts, p, pos = _batch()
    x = acts[H]
    cuts = [(0, 2), (2, 4), (4, 12)]  # p0's tied maxima (positions 6, 7) fall in two batches, p1 straddles two
    parts = [({H: x[a:b]}, p[a:b], pos[a:b]) for a, b in cuts]
    assert _build(tiny, parts) == _build(tiny, [(acts, p, pos)])


def test_logit_effects_equal_the_direct_product(tiny):
    sae = identity_sae(seed=3)
    d = _build(tiny, [_batch()], sae=sae)
    model = tiny.model
    with torch.no_grad():
        want = (sae.W_dec[1] * model.model.norm.weight) @ model.lm_head.weight.T
    got = d["nodes"][node_key(H, 1)]["logits"]
    assert [t["token_id"] for t in got["promoted"]] == want.topk(5).indices.tolist()
    assert [t["token_id"] for t in got["suppressed"]] == (-want).topk(5).indices.tolist()
    assert got["promoted"][0]["value"] == pytest.approx(float(want.max()), rel=1e-6)
    assert got["promoted"][0]["token"] == tiny.tokenizer.decode([int(want.argmax())])
    torch.testing.assert_close(logit_effects(model, H, sae.W_dec[:2]), torch.stack([
        (sae.W_dec[i] * model.model.norm.weight) @ model.lm_head.weight.T for i in range(2)]).detach())


def test_mlp_post_directions_go_through_down_proj(tiny):
    hook, d = "blocks.2.mlp.hook_post", torch.randn(2, 128)
    mlp_out = d @ tiny.model.model.layers[2].mlp.down_proj.weight.T
    torch.testing.assert_close(logit_effects(tiny.model, hook, d), logit_effects(tiny.model, H, mlp_out))


def test_error_nodes_get_no_dashboard_and_attribution_per_circuit(tiny):
    d = _build(tiny, [_batch()])
    assert sorted(d["nodes"]) == [node_key(H, 0), node_key(H, 1)]
    assert not any("error" in k for k in d["nodes"])
    assert [(e["hook"], e["circuits"]) for e in d["error_nodes"]] == [(H, ["toxic/cyber"])]
    assert "no dashboard" in d["error_nodes"][0]["reason"]
    # feature 0 is in the cyber circuit at two positions: summed
    assert d["nodes"][node_key(H, 0)]["attribution"] == {"toxic": {"cyber": 0.75, "fraud": None}}
    assert d["nodes"][node_key(H, 1)]["attribution"] == {"toxic": {"cyber": None, "fraud": -2.0}}


def test_same_input_same_bytes(tiny, tmp_path):
    for name in ("a.json", "b.json"):
        write_json(tmp_path / name, _build(tiny, [_batch()]))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def _write_store(d: Path, rows=ROWS, shard_prompts=2) -> ActivationStore:
    """A complete store of the rows, ``shard_prompts`` prompts per shard, written as the collector writes one."""
    acts, p, pos = _batch(rows)
    x, shards = acts[H], []
    for i, a in enumerate(range(0, len(rows), shard_prompts)):
        keep = (p >= a) & (p < a + shard_prompts)
        rec = write_shard(d / shard_name(i), {f"acts.{H}": x[keep], "prompt_index": p[keep].int(),
                                                "position": pos[keep].int(), "from_end": (9 - pos[keep]).int(),
                                                "refusal_score": torch.zeros(shard_prompts, dtype=torch.float64),
                                                "n_tokens": torch.full((shard_prompts,), 9, dtype=torch.int32)})
        shards.append({"file": shard_name(i), "prompt_range": [a, a + shard_prompts], **rec})
    write_manifest(d, {"fingerprint": {}, "complete": True, "hooks": [H], "d_model_by_hook": {H: D},
                       "prompts": _rows(rows), "shards": shards})
    return ActivationStore(d)


def test_store_batches_give_what_the_rows_give(tiny, tmp_path):
    store = _write_store(tmp_path)
    assert _build(tiny, store_batches(store, [H])) == _build(tiny, [_batch()])


def _settings(**kw):
    return SimpleNamespace(dashboards=DashboardSettings(**{"enabled": True, "top_examples": 2, "top_tokens": 3, **kw}),
                           discovery_split="train", batch_size=4)


def test_store_and_forward_fallback_agree_and_runs_reuse(tiny, prompts, tmp_path, monkeypatch):
    hooks = ["blocks.1.hook_resid_post"]
    prompts = prompts.filter(split="train")
    store_dir = tmp_path / "store"
    plan = CollectionPlan(hooks=hooks, positions="all", batch_size=5, shard_prompts=8, record_refusal_score=False)
    collect_activations(tiny, prompts, plan, store_dir, [], progress=False)
    torch.manual_seed(0)
    sae = SparseAutoencoder(D, 16, "relu_l1").eval().requires_grad_(False)
    saes = {H: HookedSAE(H, sae)}
    circuit = tmp_path / "c.json"
    write_json(circuit, {"kind": "toxic", "category": "cyber", "nodes": [
        {"id": f"{H}/{f}", "hook": H, "feature": f, "attribution": 1.0} for f in (1, 4, 9)]})
    fmt = ChatFormatter(tiny.tokenizer)
    args = ([circuit], saes, tiny, prompts)
    from_store = write_run_dashboards(tmp_path / "a.json", *args, store_dir, _settings(), fmt, "h")
    forward = write_run_dashboards(tmp_path / "b.json", *args, None, _settings(), fmt, "h")
    assert from_store["source"]["kind"] == "store" and forward["source"]["kind"] == "forward"
    assert all(n["top_examples"] for n in from_store["nodes"].values()) and len(from_store["nodes"]) == 3

    def upto_max(d, e):  # the tokens up to the max one: equal for prompts tied by a shared prefix (causal model)
        return d["prompts"][e["prompt_id"]]["tokens"][: e["token_index"] + 1]

    for key, node in from_store["nodes"].items():
        other = forward["nodes"][key]
        assert len(node["top_examples"]) == len(other["top_examples"]) == 2
        for e, f in zip(node["top_examples"], other["top_examples"]):
            assert e["activation"] == pytest.approx(f["activation"], rel=1e-4)
            assert upto_max(from_store, e) == upto_max(forward, f)
        for g, h in zip(node["by_group"], other["by_group"]):
            assert g["n_tokens"] == h["n_tokens"] and g["mean"] == pytest.approx(h["mean"], rel=1e-4, abs=1e-6)
    # a second run with the same inputs reuses the file; other settings rebuild it; disabled removes it
    monkeypatch.setattr("refusal.circuit.dashboard_run.build_dashboards", lambda *a, **k: pytest.fail("rebuilt"))
    assert write_run_dashboards(tmp_path / "a.json", *args, store_dir, _settings(), fmt, "h") == from_store
    with pytest.raises(pytest.fail.Exception, match="rebuilt"):
        write_run_dashboards(tmp_path / "a.json", *args, store_dir, _settings(top_tokens=4), fmt, "h")
    assert write_run_dashboards(tmp_path / "a.json", *args, store_dir, _settings(enabled=False), fmt, "h") is None
    assert not (tmp_path / "a.json").exists()


def _circuit_cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("discover", overrides=list(overrides)).circuit


def test_config_keys_reach_the_settings_and_bad_values_are_one_line_errors():
    s = settings_from(_circuit_cfg("circuit.dashboards.top_examples=4", "circuit.dashboards.top_tokens=7",
                                   "circuit.dashboards.enabled=false"))
    assert s.dashboards == DashboardSettings(False, 4, 7)
    for override, needle in [("circuit.dashboards.top_examples=0", "circuit.dashboards.top_examples=0 is not valid"),
                             ("circuit.dashboards.top_tokens=-1", "circuit.dashboards.top_tokens=-1 is not valid")]:
        with pytest.raises(ConfigError, match=needle) as e:
            settings_from(_circuit_cfg(override))
        assert "\n" not in str(e.value)


def test_json_is_valid_and_sorted(tiny):
    d = _build(tiny, [_batch()])
    text = json.dumps(d, sort_keys=True)
    assert json.loads(text) == d


def test_discover_writes_dashboards_for_every_feature_node(tmp_path):
    from test_discover_task import _run, fake_train_dir

    from refusal.evaluation.dashboard_section import dashboards_section
    from refusal.evaluation.inputs import load_inputs

    train = fake_train_dir(tmp_path / "train")
    summary = _run(train, tmp_path / "out", "circuit.dashboards.top_examples=2")
    dash = json.loads((tmp_path / "out" / "dashboards.json").read_text())
    circuits = [json.loads(Path(c["file"]).read_text()) for c in summary["circuits"]]
    want = {node_key(n["hook"], n["feature"]) for c in circuits for n in c["nodes"] if n["feature"] != "error"}
    assert want and set(dash["nodes"]) == want
    assert dash["source"]["kind"] == "forward"  # the fake train run has no activation store
    assert all(len(n["top_examples"]) <= 2 for n in dash["nodes"].values())
    assert load_inputs(train, tmp_path / "out").dashboards == dash
    assert dashboards_section(dash).missing is None
