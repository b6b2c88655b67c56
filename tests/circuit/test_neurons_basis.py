"""The MLP-neuron basis (circuit.basis=neurons) and the LRP-linearised attribution (refusal/circuit/lrp.py): hand
computations on the tiny random Llama, and discover -> evaluate (faithfulness, transfer) on neurons."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from circuits_testlib import SAFE, TOXIC, make_cm
from hydra import compose, initialize_config_dir

import refusal.schemas  # noqa: F401  (registers the schemas)
from refusal.circuit.attribution import attribute, node_space
from refusal.circuit.metric import build_metric
from refusal.circuit.model import CircuitModel
from refusal.model.chat import ChatFormatter
from refusal.circuit.lrp import half_product, identity_act, lrp_linearised, rmsnorm_forward
from refusal.circuit.neurons import neuron_hooks, universal_mask
from refusal.circuit.patch import PatchSource
from refusal.data.build import build_prompt_set
from refusal.organism.build import load
from refusal.errors import ConfigError
from refusal.tasks.discover import discover
from refusal.tasks.evaluate import evaluate

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4  # relative: float32 sums over ~10^4 terms


def linear_metric(logits):
    """logit(10) − logit(20): linear in the logits (the library's logit_diff is a logsumexp difference, which is
    not, so Σ x·∇'m = m holds only up to that last non-linearity)."""
    return logits[..., 10].double() - logits[..., 20].double()


def _neuron_cm(model, tok, layers, metric=None):
    if metric is not None:
        return make_cm(model, tok, saes=neuron_hooks(model, layers, 4), metric=metric)
    return CircuitModel(model, ChatFormatter(tok), neuron_hooks(model, layers, 4), "post_instruction", linear_metric, 4)


def _embed_relevance(model, enc, metric, lrp: bool):
    """(m [B], Σ_tokens emb · ∇m [B]) with the plain or the LRP-linearised backward."""
    emb = model.get_input_embeddings()(enc.input_ids).detach().requires_grad_(True)
    with lrp_linearised(model) if lrp else torch.enable_grad():
        m = metric(model(inputs_embeds=emb, attention_mask=enc.attention_mask, use_cache=False).logits[:, -1])
    (g,) = torch.autograd.grad(m.sum(), [emb])
    return m.detach().double(), (emb * g).sum((1, 2)).double()


def test_lrp_relevance_of_the_embeddings_sums_to_the_logit_difference(frozen_tiny):
    """Every rule together: Llama has no biases, so with the LRP backward Σ emb·∇'m = m for m linear in the logits
    (linear_metric); the plain gradient × input is far from it (the control that this check can fail)."""
    model, tok = frozen_tiny
    cm = _neuron_cm(model, tok, [1])
    enc = cm.encode(TOXIC[:4])
    m, rel = _embed_relevance(model, enc, cm.metric, lrp=True)
    assert torch.allclose(rel, m, rtol=TOL, atol=TOL * m.abs().max())
    _, plain = _embed_relevance(model, enc, cm.metric, lrp=False)
    assert (plain - m).abs().max() > 100 * TOL * m.abs().max()


def test_neuron_relevances_plus_the_residual_skip_sum_to_the_metric(frozen_tiny):
    """Cut at layer 3 (the last: its neurons at earlier positions cannot reach the last logits): the lrp IE of
    every neuron node against a zero patch (a·∇'m) + resid_mid·∇'m (the skip path around the MLP, ∇' read at the
    layer output) = m(clean). Also: the library's per-node relevance equals the hand a·∇'m at the node positions."""
    model, tok = frozen_tiny
    cm = _neuron_cm(model, tok, [3])
    prompts = TOXIC[:4]
    attr = attribute(cm, prompts, PatchSource("zero", cm, SAFE), "lrp", "sum")
    enc = cm.encode(prompts)
    layer, saved = model.model.layers[3], {}
    h1 = layer.post_attention_layernorm.register_forward_pre_hook(lambda m_, a: saved.__setitem__("mid", a[0]))
    h2 = layer.mlp.down_proj.register_forward_pre_hook(lambda m_, a: saved.__setitem__("n", a[0]))

    def keep_out(m_, a, out):
        saved["post"] = out[0] if isinstance(out, tuple) else out
    h3 = layer.register_forward_hook(keep_out)
    emb = model.get_input_embeddings()(enc.input_ids).detach().requires_grad_(True)
    try:
        with lrp_linearised(model):
            m = cm.metric(model(inputs_embeds=emb, attention_mask=enc.attention_mask, use_cache=False).logits[:, -1])
            g_post, g_n = torch.autograd.grad(m.sum(), [saved["post"], saved["n"]])
    finally:
        for h in (h1, h2, h3):
            h.remove()
    skip = (saved["mid"].detach() * g_post).sum((1, 2)).double()
    ie_sum = attr.ie.double().sum(1)
    assert torch.allclose(ie_sum + skip, m.detach().double(), rtol=TOL, atol=TOL * float(m.abs().max()))
    P = cm.n_positions
    hand = (saved["n"].detach() * g_n)[:, -P:].sum(1)
    assert torch.allclose(attr.ie[:, :-1], hand.float(), rtol=1e-4, atol=1e-6)
    assert (attr.ie[:, -1] == 0).all()  # the error slot of an exact basis carries nothing


def test_half_rule_splits_the_gate_up_relevance_equally():
    g = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    p = half_product(g, u)
    assert torch.equal(p, g * u)  # forward value unchanged
    w = torch.randn(5, 7, dtype=torch.float64)  # upstream gradient
    gg, gu = torch.autograd.grad((p * w).sum(), [g, u])
    assert torch.allclose(g * gg, 0.5 * w * g * u) and torch.allclose(u * gu, 0.5 * w * g * u)
    z = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    a = identity_act(torch.nn.functional.silu, z)
    (gz,) = torch.autograd.grad(a.sum(), [z])
    assert torch.equal(a, torch.nn.functional.silu(z)) and torch.allclose(z * gz, a)  # identity rule
    assert torch.allclose(gz, torch.sigmoid(z))  # = σ(z) for SiLU (½ at 0)


def test_detached_rmsnorm_scale_gives_the_hand_linearised_gradient(frozen_tiny):
    norm = copy.deepcopy(frozen_tiny[0].model.layers[0].input_layernorm).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 4, norm.weight.shape[0], dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(x)
    y = rmsnorm_forward(norm)(x)
    assert torch.allclose(y, norm(x))
    (g,) = torch.autograd.grad((y * v).sum(), [x])
    s = 1 / torch.sqrt(x.detach().pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)  # hand: y = w·s0·x
    assert torch.allclose(g, v * norm.weight * s)
    (g_true,) = torch.autograd.grad((norm(x) * v).sum(), [x])
    assert not torch.allclose(g_true, g, atol=1e-3)
    assert torch.allclose((x * g).sum(), (y * v).sum())  # conservative: x·∇'(v·y) = v·y


def test_universal_filter_removes_a_neuron_firing_on_every_prompt(frozen_tiny):
    """A planted neuron of the last layer writes the refusal direction and fires on every prompt: it is in the
    top-k relevance of every prompt (toxic and safe) and the filter removes it; the synthetic case checks counts."""
    model, tok = copy.deepcopy(frozen_tiny[0]), frozen_tiny[1]
    cm = _neuron_cm(model, tok, [3], metric="refusal_score")
    layer, j = model.model.layers[3], 5
    saved = []
    hook = layer.mlp.register_forward_pre_hook(lambda m_, a: saved.append(a[0][:, -cm.n_positions:].reshape(-1, 64)))
    with torch.no_grad():
        for _, enc in cm.batches(TOXIC + SAFE):
            cm.model(**enc.model_inputs(), use_cache=False)
    hook.remove()
    d = torch.cat(saved).mean(0)  # the mean MLP input at the node positions: every input projects positively
    ref = build_metric("refusal_score", tok)[1]["refusal_token_ids"]
    with torch.no_grad():
        layer.mlp.gate_proj.weight[j] = layer.mlp.up_proj.weight[j] = 3.0 * d / d.pow(2).sum()
        layer.mlp.down_proj.weight[:, j] = 3.0 * model.lm_head.weight[ref].mean(0)  # writes the refusal tokens
    attr = attribute(cm, TOXIC + SAFE, PatchSource("zero", cm, SAFE), "lrp", "sum")
    space = node_space(cm, "sum")
    mask = universal_mask(attr.ie, space, top_k=3, fraction=0.9)
    assert bool(mask[j]) and int(mask.sum()) <= 3
    plain = _neuron_cm(frozen_tiny[0], tok, [3], metric="refusal_score")
    before = attribute(plain, TOXIC + SAFE, PatchSource("zero", plain, SAFE), "lrp", "sum")
    assert not universal_mask(before.ie, space, top_k=3, fraction=0.9)[j]  # universal because planted
    ie = torch.rand(10, space.n_nodes) * 0.1
    ie[:, 7], ie[:9, 8] = 5.0, 5.0  # 7: top-1 on every prompt; 8: on 90% (not more than 0.9)
    m = universal_mask(ie, space, top_k=2, fraction=0.9)
    assert m[7] and not m[8] and int(m.sum()) == 1
    assert not universal_mask(ie, space, top_k=0, fraction=0.9).any()
    assert not universal_mask(ie, space, top_k=2, fraction=1.0).any()


def _compose(name: str, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=["model=tiny_llama", "logger=csv", f"paths.output_dir={out}",
                                        f"paths.root_dir={out}", *overrides])


NEURONS = ["data=tiny", "data.max_per_category=12", "circuit.basis=neurons", "circuit.attribution_method=lrp",
           "circuit.neurons.layers=[2]",
           "circuit.top_n_per_layer=8", "circuit.statistics.n_permutations=20", "circuit.statistics.n_resamples=0",
           "circuit.separate_safe_toxic=false", "circuit.neurons.universal_top_k=4"]


def test_bad_neuron_settings_are_refused(tmp_path):
    for bad, word in (("circuit.basis=features", "basis"), ("circuit.neurons.universal_fraction=1.5", "fraction"),
                      ("circuit.neurons.universal_top_k=-1", "universal_top_k")):
        with pytest.raises(ConfigError, match=word):
            discover(_compose("discover", tmp_path / "x", *NEURONS, bad))


def _check_neuron_dashboards(disc: Path, summary: dict) -> None:
    """Every neuron of every circuit has a dashboard; a neuron's logit effect is down_proj's column through the
    final norm's gain and the unembedding, and its top example's activation is the neuron's largest value
    act(gate)·up over that prompt's tokens (user text on), both by hand."""
    dash = json.loads((disc / "dashboards.json").read_text())
    nodes = {(n["hook"], n["feature"]) for c in summary["circuits"]
             for n in json.loads(Path(c["file"]).read_text())["nodes"]}
    assert {(d["hook"], d["feature"]) for d in dash["nodes"].values()} == nodes and dash["source"]["kind"] == "forward"
    cfg = _compose("discover", disc / "x", *NEURONS)
    loaded = load(cfg.model)
    model = loaded.model
    d = max(dash["nodes"].values(), key=lambda n: (len(n["top_examples"]), -n["feature"]))
    f, mlp = d["feature"], model.model.layers[2].mlp
    with torch.no_grad():
        want = (mlp.down_proj.weight[:, f] * model.model.norm.weight) @ model.lm_head.weight.T
    assert [t["token_id"] for t in d["logits"]["promoted"]] == want.topk(len(d["logits"]["promoted"])).indices.tolist()
    assert d["logits"]["promoted"][0]["value"] == pytest.approx(float(want.max()), rel=1e-5)
    top = d["top_examples"][0]
    text = {r.id: r.prompt for r in build_prompt_set(cfg.data)}[top["prompt_id"]]
    enc = ChatFormatter(loaded.tokenizer, loaded.system_prompt, cfg.circuit.max_length).encode([text])
    seen = {}

    def keep(module, inputs, output):
        seen["x"] = inputs[0].detach()

    handle = mlp.down_proj.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(**enc.model_inputs(), use_cache=False)
    finally:
        handle.remove()
    values = seen["x"][0, enc.positions("all")[0], f]
    assert top["activation"] == pytest.approx(float(values.max()), rel=1e-5, abs=1e-6)


def test_discover_and_evaluate_on_the_neuron_basis(tmp_path):
    disc = tmp_path / "disc"
    discover(_compose("discover", disc, *NEURONS))
    summary = json.loads((disc / "discovery_summary.json").read_text())
    assert summary["recognition"] in ("monolithic", "modular", "mixed")
    assert summary["manifest"]["saes"] == {} and summary["settings"]["basis"] == "neurons"
    universal = set(summary["manifest"]["universal_neurons"])
    for c in summary["circuits"]:
        circuit = json.loads(Path(c["file"]).read_text())
        assert circuit["nodes"] and {n["hook"] for n in circuit["nodes"]} == {"blocks.2.mlp.hook_post"}
        assert all(isinstance(n["feature"], int) and 0 <= n["feature"] < 128 for n in circuit["nodes"])
        assert not universal & {n["id"] for n in circuit["nodes"]} and circuit["error_mass_fraction"] == 0
    _check_neuron_dashboards(disc, summary)
    out = tmp_path / "eval"
    evaluate(_compose("evaluate", out, f"discover_dir={disc}", "data=tiny", "data.max_per_category=12",
                      "evaluation.stages=[faithfulness,transfer,bottleneck]", "evaluation.bottleneck.size=4",
                      "evaluation.bottleneck.n_random=2", "evaluation.bottleneck.curve_sizes=[]",
                      "evaluation.max_new_tokens=3", "evaluation.bootstrap.n_resamples=100",
                      "evaluation.faithfulness.thresholds=[0.1,0.0]", "evaluation.faithfulness.n_random=1",
                      "evaluation.transfer.n_random=1", "evaluation.transfer.n_permutations=20"))
    faith = json.loads((out / "faithfulness.json").read_text())
    assert faith["curves"]["all"]["discovered"] is not None
    transfer = json.loads((out / "transfer.json").read_text())
    assert transfer["decision"]["verdict"] in ("modular", "monolithic", "mixed", "inconclusive")
    # the layer-resolved verdict's evidence on neurons: sets of neurons at the neuron hook, in both bases
    bottleneck = json.loads((out / "bottleneck.json").read_text())
    assert [r["hook"] for r in bottleneck["layers"]] == ["blocks.2.mlp.hook_post"]
    assert all(isinstance(f, int) and 0 <= f < 128 for f in bottleneck["layers"][0]["sets"]["shared"])
    verdict = json.loads((out / "verdict.json").read_text())
    assert set(verdict["by_basis"]) == {"features", "directions"} and verdict["layers"] == ["blocks.2.mlp.hook_post"]
