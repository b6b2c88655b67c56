"""Circuit JSON is byte-identical for the same seed; SAEs that do not fit the model are refused in one line;
the summary's verdict follows planted structure."""
import numpy as np
import pytest
import torch
from circuits_testlib import SAFE, TOXIC, make_cm, random_sae

from refusal.circuit.attribution import Attributions, node_space
from refusal.circuit.circuit import Circuit, circuit_filename, write_circuit
from refusal.circuit.discovery import PromptGroup, attribute_group, circuit_from_rows, make_circuit
from refusal.circuit.nodes import NodeSpace
from refusal.circuit.saes import load_hooked_saes
from refusal.circuit.select import Selection
from refusal.circuit.splice import HookedSAE
from refusal.circuit.summary import StatsSettings, analyse
from refusal.circuit.verdict import DecisionRule
from refusal.data import PromptRecord
from refusal.errors import ConfigError
from refusal.model.loading import LoadedModel
from refusal.model.tiny import tiny_llama
from refusal.sae.io import save_saelens

HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


def records(texts, label, cats):
    return [PromptRecord(f"{label}:{i}", t, cats[i % len(cats)], label, "test", "train") for i, t in enumerate(texts)]


def discover_once(tmp_path, name):
    model, tok = tiny_llama(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=0)
    model.requires_grad_(False)
    tok.padding_side = "left"
    cm = make_cm(model, tok, saes={h: HookedSAE(h, random_sae(64, 24, seed=i)) for i, h in enumerate(HOOKS)})
    space = node_space(cm, "sum")
    group = attribute_group(cm, "toxic", records(TOXIC, "toxic", ["a", "b"]), records(SAFE, "safe", ["benign"]),
                            "mean_safe", "atp", "sum", 10, 4096)
    sel = Selection(node_threshold=0.01, top_n_per_layer=5, edge_threshold=0.0)
    circuit = make_circuit(cm, group, "a", "a", space, sel)
    payload = circuit.to_json(space, {"name": "refusal_score"}, {"seed": 0}, {"model": "tiny"})
    return write_circuit(tmp_path / name, "org/tiny", circuit, payload), circuit


def test_same_seed_gives_byte_identical_circuit_json(tmp_path):
    p1, c1 = discover_once(tmp_path, "one")
    p2, _ = discover_once(tmp_path, "two")
    assert p1.name == "org-tiny_a_toxic_circuit.json" == circuit_filename("org/tiny", "a", "toxic")
    assert p1.read_bytes() == p2.read_bytes()
    assert c1.n_nodes > 0 and len(c1.edges) > 0


def _loaded():
    model, tok = tiny_llama(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=0)
    return LoadedModel(model=model, tokenizer=tok, name="tiny-llama")


@pytest.mark.parametrize("d_in,hook,model_name,needle", [
    (32, "blocks.1.hook_resid_post", "tiny-llama", "has d_in=32 but 'tiny-llama' has width 64"),
    (64, "blocks.1.hook_resid_post", "SmolLM2-135M-Instruct",
     "trained on model 'SmolLM2-135M-Instruct' but the loaded model is 'tiny-llama'"),
    (64, "blocks.9.hook_resid_post", "tiny-llama", "layer 9 is out of range"),
    (64, "blocks.1.mlp.hook_post", "tiny-llama", "has d_in=64 but 'tiny-llama' has width 128"),
])
def test_mismatched_sae_is_a_one_line_config_error(tmp_path, d_in, hook, model_name, needle):
    path = save_saelens(random_sae(d_in, 16, 0), tmp_path / "sae", hook_name=hook, model_name=model_name)
    with pytest.raises(ConfigError) as e:
        load_hooked_saes([(None, str(path))], _loaded())
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_matching_saes_load_in_model_order(tmp_path):
    dirs = [(None, str(save_saelens(random_sae(64, 16, i), tmp_path / f"s{i}", hook_name=h, model_name="tiny-llama")))
            for i, h in enumerate(reversed(HOOKS))]
    saes = load_hooked_saes(dirs, _loaded())
    assert list(saes) == list(HOOKS) and all(len(s.weights_hash) == 16 for s in saes.values())


def synthetic_group(structure: str, n_per_cat: int = 12, n_feat: int = 60, seed: int = 0):
    """Attributions over one hook's features: ``modular`` = each category its own features,
    ``monolithic`` = every category the same features."""
    rng = np.random.default_rng(seed)
    cats = ["a", "b", "c", "d"]
    rows, recs = [], []
    for k, c in enumerate(cats):
        mean = np.zeros(n_feat + 1)
        feats = range(10 * k, 10 * k + 8) if structure == "modular" else range(0, 8)
        mean[list(feats)] = 1.0
        for i in range(n_per_cat):
            rows.append(mean + rng.normal(0, 0.3, n_feat + 1) * (mean > 0))
            recs.append(PromptRecord(f"{c}{i}", f"p {c} {i}", c, "toxic", "test", "train"))
    ie = torch.tensor(np.array(rows), dtype=torch.float32)
    n = len(recs)
    attr = Attributions(ie, torch.full((n,), 2.0, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
    space = NodeSpace(("blocks.1.hook_resid_post",), (n_feat,), 1, "sum")
    return PromptGroup("toxic", recs, None, attr), space, cats


@pytest.mark.parametrize("structure", ["modular", "monolithic"])
def test_summary_verdict_follows_planted_structure(tmp_path, structure):
    group, space, cats = synthetic_group(structure)
    sel = Selection(node_threshold=0.1, top_n_per_layer=20)
    circuits = {}
    for c in cats:
        rows = group.rows(c)
        mean, mask, mc, mp = circuit_from_rows(group.attributions.ie[rows], group.attributions.m_clean[rows],
                                               group.attributions.m_patch[rows], space, sel)
        circuits[c] = Circuit(c, "toxic", [group.records[i].id for i in rows], mean, mask, mc, mp)
    out = analyse(group, circuits, space, sel, StatsSettings(n_permutations=199, n_resamples=20, ci_level=0.95), DecisionRule(),
                  seed=0, heatmap_dir=tmp_path)
    assert out["recognition"] == structure
    assert set(out["heatmaps"]) == {"jaccard", "weighted_jaccard", "cosine", "pairwise_p_adjusted"}
    assert all((tmp_path / f"{k}.png").read_bytes()[:4] == b"\x89PNG" for k in out["heatmaps"])
    core = out["shared_core"]["mean_core_mass"]
    assert (core >= 0.9) if structure == "monolithic" else (core == 0.0)
    low, high = out["similarity"]["ci"]["jaccard"]["low"], out["similarity"]["ci"]["jaccard"]["high"]
    assert all(lo <= hi for r1, r2 in zip(low, high) for lo, hi in zip(r1, r2))
