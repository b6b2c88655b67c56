"""Edge attribution patching on the tiny Llama: the split forward reproduces the model, one edge's score by hand with
independent hooks, outgoing edges sum to the node's attribution patching score, exact path patching into the logits
by hand, the ranking against exact path patching of every edge, IG with one step is EAP, one-line errors, seeding."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.data import PromptSet
from refusal.data.records import PromptRecord
from refusal.errors import ConfigError
from refusal.evaluation.context import EvalContext
from refusal.evaluation.eap import EapSettings, agreement, attribute, edge_inputs, run_eap, written
from refusal.evaluation.eap_graph import Node, path_patched, receiver_grads, split_forward
from refusal.evaluation.eap_section import eap_section
from refusal.model.chat import ChatFormatter
from refusal.utils.io import json_safe

CATS = ["cyber", "fraud", "cyber", "fraud"]


def _prompts(texts) -> PromptSet:
    return PromptSet([PromptRecord(f"{label}-{i}", text, CATS[i] if label == "toxic" else "benign", label, "test",
                                   "train") for label in ("toxic", "safe") for i, text in enumerate(texts[label])])


def _ctx(loaded, texts, tmp_path, batch_size=4):
    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), _prompts(texts), SubstringJudge(REFUSAL_SUBSTRINGS),
                       resolve_refusal_tokens(loaded.tokenizer), batch_size, max_new_tokens=2,
                       boot=Bootstrap(50, 0.95, "percentile"), seed=0, out_dir=tmp_path)


def _scored(loaded, enc, toks, hooks):
    """Refusal scores [B] of a plain forward with the embeddings requiring grad and ``hooks`` [(module, kind, fn)]."""
    model = loaded.model
    handles = [model.model.embed_tokens.register_forward_hook(lambda m, a, o: o.detach().requires_grad_())]
    handles += [getattr(mod, f"register_forward_{kind}hook")(fn) for mod, kind, fn in hooks]
    try:
        with torch.enable_grad():
            return refusal_score(model(**enc.model_inputs(), use_cache=False).logits[:, -1], toks)
    finally:
        for h in handles:
            h.remove()


def test_the_split_forward_reproduces_the_model(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    enc = ctx.formatter.encode(texts["toxic"])
    with torch.no_grad():
        plain = loaded.model(**enc.model_inputs(), use_cache=False).logits
        with split_forward(loaded.model, 5):
            split = loaded.model(**enc.model_inputs(), use_cache=False).logits
    assert torch.equal(plain, split)


def test_one_edge_by_hand(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    n_pos, fmt, model = ctx.formatter.n_post_instruction, ctx.formatter, loaded.model
    g = edge_inputs(ctx, texts["toxic"][:1], texts["safe"][:1], "paired", n_pos)
    scores = attribute(ctx, texts["toxic"][:1], g["clean"], g["delta"], g["send"], g["recv"], g["mask"], n_pos, 1)
    z = {}  # edge L0.H1 -> L2.MLP: head 1's output of layer 0 (by hand), the gradient at MLP 2's own input copy
    o_proj = model.model.layers[0].self_attn.o_proj
    for p in (texts["toxic"][0], texts["safe"][0]):
        _scored(loaded, fmt.encode([p]), ctx.refusal_token_ids,
                [(o_proj, "pre_", lambda m, a, p=p: z.__setitem__(p, a[0][0, -n_pos:, 16:32].detach()))])
    a = {p: v @ o_proj.weight[:, 16:32].T for p, v in z.items()}
    copy = {}

    def own_copy(m, args):
        copy["x"] = args[0].clone()
        return (copy["x"],)
    m = _scored(loaded, fmt.encode(texts["toxic"][:1]), ctx.refusal_token_ids,
                [(model.model.layers[2].post_attention_layernorm, "pre_", own_copy)])
    grad = torch.autograd.grad(m.sum(), copy["x"])[0][0, -n_pos:]
    want = float(((a[texts["safe"][0]] - a[texts["toxic"][0]]) * grad).sum())
    s, r = g["send"].index(Node("head", 0, 1)), g["recv"].index(Node("mlp", 2))
    assert abs(want) > 1e-6 and float(scores[0, s, r]) == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_outgoing_edges_sum_to_the_node_attribution_patching_score(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    n_pos, model = ctx.formatter.n_post_instruction, loaded.model
    g = edge_inputs(ctx, texts["toxic"], texts["safe"], "paired", n_pos)
    edges = attribute(ctx, texts["toxic"], g["clean"], g["delta"], g["send"], g["recv"], g["mask"], n_pos, 1)
    out = {}  # node AtP: delta . dm/d(node output) in a plain forward, no per-receiver copies
    hooks = [(model.model.layers[1].self_attn.o_proj, "pre_", lambda m, a: out.__setitem__("z", a[0])),
             (model.model.layers[2].mlp, "", lambda m, a, o: out.__setitem__("mlp", o))]
    m = _scored(loaded, ctx.formatter.encode(texts["toxic"]), ctx.refusal_token_ids, hooks)
    gz, gm = (x[:, -n_pos:] for x in torch.autograd.grad(m.sum(), [out["z"], out["mlp"]]))
    for node, grad in ((Node("head", 1, 3), gz[..., 48:64]), (Node("mlp", 2), gm)):
        j = g["send"].index(node)
        atp = (g["delta"][j] * grad).sum((1, 2)).double()
        assert atp.abs().max() > 1e-6
        torch.testing.assert_close(edges[:, j].sum(1), atp, rtol=1e-4, atol=1e-9)


def test_exact_path_patching_into_the_logits_by_hand(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    n_pos, model = ctx.formatter.n_post_instruction, loaded.model
    g = edge_inputs(ctx, texts["toxic"], texts["safe"], "paired", n_pos)
    delta = written(model, g["send"], g["delta"])[[g["send"].index(Node("mlp", 1))]]
    enc = ctx.formatter.encode(texts["toxic"])
    got = path_patched(ctx, enc, Node("logits"), delta)[0]

    def shift(m, args):
        x = args[0].clone()
        x[:, -n_pos:] += delta[0]
        return (x,)
    want = _scored(loaded, enc, ctx.refusal_token_ids, [(model.model.norm, "pre_", shift)]).detach()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_eap_ranks_the_edges_like_exact_path_patching(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    out = run_eap(ctx, ctx.prompts, dataclasses.replace(EapSettings(), validate=True), tmp_path)
    val = out["validation"]
    assert out["n_edges"] == 207
    for method in ("eap", "eap_ig"):  # measured: Spearman 0.968 / 0.976, top-20 overlap 0.85 / 0.90, sign 0.97 / 0.99
        # (clean - corrupt) instead of (corrupt - clean), or the gradient's sign flipped: Spearman ~ -0.97, sign ~ 0.03
        assert val[method]["spearman"] >= 0.9 and val[method]["top_k_overlap"] >= 0.7
        assert val[method]["sign_agreement"] >= 0.9
    assert val["eap_ig"]["spearman"] > val["eap"]["spearman"]
    json.dumps(json_safe(out), allow_nan=False)
    assert open(out["plots"]["eap"], "rb").read(4) == b"\x89PNG"
    section = eap_section(out)
    assert section.missing is None and len(section.blocks) > 4


def test_ig_with_one_step_is_eap_and_targets_at_clean_change_nothing(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    s = dataclasses.replace(EapSettings(), ig_steps=1, corruption="mean")
    out = run_eap(ctx, ctx.prompts, s, tmp_path)
    assert out["top_edges"]["eap"] == out["top_edges"]["eap_ig"]
    n_pos = ctx.formatter.n_post_instruction
    g = edge_inputs(ctx, texts["toxic"], texts["safe"], "paired", n_pos)
    enc = ctx.formatter.encode(texts["toxic"])
    plain = receiver_grads(ctx, enc, g["recv"], n_pos)[0]
    through = receiver_grads(ctx, enc, g["recv"], n_pos, dict(zip(g["send"], g["clean"])))[0]
    torch.testing.assert_close(through, plain, rtol=1e-4, atol=1e-7)


def test_the_same_seed_gives_the_same_result(loaded, texts, tmp_path):
    ctx = _ctx(loaded, texts, tmp_path)
    s = dataclasses.replace(EapSettings(), methods=("eap",), n_per_category=1, n_safe=2)
    a, b = (run_eap(ctx, ctx.prompts, s, tmp_path) for _ in range(2))
    assert a["top_edges"] == b["top_edges"] and a["components"] == b["components"] and a["n_toxic"] == 2


GOOD = {f.name: f.default for f in dataclasses.fields(EapSettings)}


@pytest.mark.parametrize("key,value,match", [
    ("corruption", "shuffled", r"evaluation.eap.corruption='shuffled' is not valid; choose one of \['paired', 'mean'"),
    ("methods", ["acdc"], r"evaluation.eap.methods entry='acdc' is not valid; choose one of \['eap', 'eap_ig'\]"),
    ("methods", [], r"evaluation.eap.methods=\[\] is not valid; use a non-empty list"),
    ("ig_steps", 0, r"evaluation.eap.ig_steps=0 is not valid; use an int >= 1"),
    ("top_k", 2.5, r"evaluation.eap.top_k=2.5 is not valid; use an int >= 1"),
    ("validate", "yes", r"evaluation.eap.validate='yes' is not valid; use true or false"),
    ("positions", 0, r"evaluation.eap.positions=0 is not valid; use an int >= 1"),
    ("split", "dev", r"evaluation.eap.split='dev' is not valid"),
    ("colour", "red", r"evaluation.eap.colour is not a valid key; choose from \['split'"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    assert EapSettings.from_config(GOOD) == EapSettings()
    with pytest.raises(ConfigError, match=match) as err:
        EapSettings.from_config({**GOOD, key: value})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"evaluation.eap.top_k is missing"):
        EapSettings.from_config({k: v for k, v in GOOD.items() if k != "top_k"})


@pytest.mark.parametrize("result,not_run", [(None, False), ({"status": "skipped", "reason": "not asked"}, True),
                                            ({"status": "missing", "reason": "no model"}, False)])
def test_absent_results_give_missing_sections(result, not_run):
    section = eap_section(result)
    assert section.missing and section.not_run is not_run and not section.blocks


def test_agreement_numbers_by_hand():
    exact = torch.tensor([3.0, -2.0, 1.0, 0.5, 0.001]).numpy()
    same, flipped = agreement(exact * 2, exact, 2), agreement(-exact, exact, 2)
    assert same == {"spearman": pytest.approx(1.0), "k": 2, "top_k_overlap": 1.0, "sign_agreement": 1.0}
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["sign_agreement"] == 0.0
    assert agreement(exact[[1, 0, 2, 3, 4]], exact, 2)["top_k_overlap"] == 1.0  # the same two, either order
