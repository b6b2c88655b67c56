"""Tiny Llamas with a planted refusal mechanism for the bottleneck stage's tests (test_bottleneck*.py import it),
and an independent recomputation of the stage's statistics.

Planted (``_plant``): the final norm is made a fixed scale (logits linear in the last residual stream); linear read-outs
g_c of that stream are fitted on the discovery prompts (g_c·x = 1 on c's prompts, 0 on the others) and the refusal
tokens' unembedding rows get 8·Σ_c g_c, so the model refuses every toxic category. The SAE at the last block carries
each g_c on three features (0.4, 0.3, 0.3 of it; each reads ĝ_c, writes along the dual basis so ablating one category's
features leaves the other read-outs alone); its other features and the SAE at block 1 are random.
- monolithic: one read-out for every toxic prompt (two categories): the pooled top-3 features are the mechanism.
- modular: one read-out per category (three): a pooled top-3 takes the 0.4 feature of each and removes 0.4 of every
  category's refusal; each category's own set removes all of its own refusal and none of the others'.
Attributions come from the discover pipeline's own atp code. ``expected`` recomputes the evidence's point estimates
with plain forwards and a hand-written hook at the block output (no refusal.evaluation code)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.circuit.attribution import attribute
from refusal.circuit.metric import build_metric
from refusal.circuit.model import CircuitModel
from refusal.circuit.nodes import NodeSpace
from refusal.circuit.patch import PatchSource, mean_values
from refusal.circuit.splice import HookedSAE
from refusal.data import PromptRecord, PromptSet
from refusal.evaluation.bottleneck import BottleneckSettings, run_bottleneck
from refusal.evaluation.circuit_setup import CircuitSetup
from refusal.evaluation.context import EvalContext
from refusal.evaluation.nodes import NodeAblator
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations, decoder_layers
from refusal.model.loading import LoadedModel
from refusal.model.tiny import tiny_llama
from refusal.sae.model import SparseAutoencoder
from refusal.verdict import LayerRule

HOOKS = ("blocks.1.hook_resid_post", "blocks.3.hook_resid_post")
D_SAE, K, SHARES = 16, 3, (0.4, 0.3, 0.3)
WORDS = "alpha beta gamma delta river stone cloud paper lamp orbit".split()
STEMS = {"monolithic": {"bomb": "evil evil bomb", "hack": "evil evil hack"},
         "modular": {"bomb": "bomb bomb bomb", "hack": "hack hack hack", "poison": "poison poison poison"}}


def _prompts(kind: str) -> PromptSet:
    recs = []
    for (label, cat), stem in [(("toxic", c), s) for c, s in STEMS[kind].items()] + [(("safe", "benign"), "nice cake")]:
        for i in range(14):
            text = f"{stem} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 3))
            recs.append(PromptRecord(f"{label}:{cat}:{i}", text, cat, label, "test", "train" if i < 7 else "test"))
    recs.append(PromptRecord("toxic:lone:0", "evil lone stone", "lone", "toxic", "test", "test"))  # 1 prompt: dropped
    return PromptSet(recs)


def _random_sae(seed: int) -> SparseAutoencoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = SparseAutoencoder(64, D_SAE, "relu_l1")
        with torch.no_grad():
            sae.b_enc.normal_(0.0, 0.3)
            sae.b_dec.normal_(0.0, 0.1)
    return sae.eval().requires_grad_(False)


def _resid(model, fmt, prompts, hook=HOOKS[1]):
    with torch.no_grad(), capture_activations(model, [hook], stop_early=False) as cache:
        model(**fmt.encode(prompts).model_inputs(), use_cache=False)
    return cache[hook]


class _Scale(nn.Module):
    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def _plant(kind, model, fmt, ids, train: PromptSet) -> SparseAutoencoder:
    recs = list(train)
    x = _resid(model, fmt, [r.prompt for r in recs])[:, -1].double()
    rms = x.pow(2).mean(-1).sqrt().mean()
    model.model.norm = _Scale(float(1 / rms))
    groups = ["toxic"] if kind == "monolithic" else list(STEMS[kind])
    target = torch.tensor([[float(g in (r.category, r.label)) for g in groups] for r in recs], dtype=torch.float64)
    G = torch.linalg.solve(x.T @ x + 1e-4 * torch.eye(64, dtype=torch.float64), x.T @ target)  # [64, groups]
    dual = G @ torch.linalg.inv(G.T @ G)
    sae = _random_sae(11)
    with torch.no_grad():
        model.lm_head.weight[ids] += (8.0 * rms * G.sum(1)).float()
        for c in range(len(groups)):
            for j, share in enumerate(SHARES):
                f = 3 * c + j
                sae.W_enc[:, f], sae.b_enc[f] = (G[:, c] / G[:, c].norm()).float(), 50.0
                sae.W_dec[f] = (share * G[:, c].norm() * dual[:, c]).float()
    return sae


def organism(kind: str, out, **settings):
    model, tok = tiny_llama(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=0)
    tok.padding_side = "left"
    model.requires_grad_(False)
    fmt, prompts, ids = ChatFormatter(tok), _prompts(kind), resolve_refusal_tokens(tok)
    train = prompts.filter(split="train")
    saes = {HOOKS[0]: _random_sae(10), HOOKS[1]: _plant(kind, model, fmt, ids, train)}
    metric, desc = build_metric("refusal_score", tok, ids)
    cm = CircuitModel(model, fmt, {h: HookedSAE(h, s) for h, s in saes.items()}, "post_instruction", metric, 4)
    toxic, safe = list(train.filter(label="toxic")), [r.prompt for r in train.filter(label="safe")]
    a = attribute(cm, [r.prompt for r in toxic], PatchSource("mean_safe", cm, safe), "atp", "sum")
    space = NodeSpace(HOOKS, (D_SAE, D_SAE), cm.n_positions, "sum")
    with torch.no_grad():
        values = {h: (f[0], e[0]) for h, (f, e) in mean_values(cm, safe).items()}
    setup = CircuitSetup(space, fmt, NodeAblator(space, saes, values), {}, metric, desc,
                         {"positions": "post_instruction"}, cm, train)
    inputs = SimpleNamespace(attributions={"ie": a.ie, "m_clean": a.m_clean, "m_patch": a.m_patch,
                                           "rows": [{"id": r.id, "category": r.category} for r in toxic]},
                             circuits={}, prompts=prompts, discovery={"manifest": {"discovery_split": "train"},
                                                                      "settings": {}})
    loaded = LoadedModel(model=model, tokenizer=tok, name="tiny-llama")
    ctx = EvalContext(loaded, fmt, prompts.filter(split="test"), None, ids, 4, 1, Bootstrap(200, 0.95, "percentile"), 0,
                      out)
    s = BottleneckSettings(**{"size": K, "curve_sizes": (1, 9), "n_random": 4, "rule": LayerRule(), **settings})
    return SimpleNamespace(res=run_bottleneck(ctx, setup, inputs, s, out), ctx=ctx, setup=setup, inputs=inputs,
                           settings=s, saes=saes, fmt=fmt, model=model, ids=ids, out=out, P=cm.n_positions)


def layer_row(res: dict, hook: str) -> dict:
    return next(r for r in res["layers"] if r["hook"] == hook)


# ------------------------------------------------------------------------------------- independent computation
def _logits(fx, prompts, hook=None, feats=(), target=None):
    """Last-token logits of plain full forwards; with ``feats``: those SAE features of ``hook`` set to ``target``
    [P, d_sae] at the last P tokens by a forward hook on the block's output (no refusal.evaluation code)."""
    handle = None
    if feats:
        sae, idx, P = fx.saes[hook], torch.tensor(feats), fx.P

        def edit(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            tail = x[:, -P:]
            delta = (target[:, idx] - sae.encode(tail)[..., idx]) @ sae.W_dec[idx]
            x = torch.cat([x[:, :-P], tail + delta], 1)
            return (x, *out[1:]) if isinstance(out, tuple) else x
        handle = decoder_layers(fx.model)[int(hook.split(".")[1])].register_forward_hook(edit)
    try:
        with torch.no_grad():
            return fx.model(**fx.fmt.encode(prompts).model_inputs(), use_cache=False).logits[:, -1].double()
    finally:
        if handle is not None:
            handle.remove()


def _mean_features(fx, hook, prompts):
    with torch.no_grad():
        return fx.saes[hook].encode(_resid(fx.model, fx.fmt, prompts, hook)[:, -fx.P:]).mean(0)


def expected(fx, hook) -> dict:
    """The evidence's point estimates at ``hook``, recomputed from plain forwards."""
    row, cats = layer_row(fx.res, hook), fx.res["categories"]
    test, train = fx.ctx.prompts, fx.inputs.prompts.filter(split="train")
    tox = {c: [r.prompt for r in test.filter(label="toxic", category=c)] for c in cats}
    safe = [r.prompt for r in test.filter(label="safe")]
    to_safe = _mean_features(fx, hook, [r.prompt for r in train.filter(label="safe")])
    to_toxic = _mean_features(fx, hook, [r.prompt for r in train.filter(label="toxic")])

    def score(ps, feats=(), target=to_safe):
        return float(refusal_score(_logits(fx, ps, hook, feats, target), fx.ids).mean())
    floor = score(safe)
    base = {c: score(tox[c]) for c in cats}
    head = {c: base[c] - floor for c in cats}
    sets = row["sets"]
    base_lp = torch.log_softmax(_logits(fx, safe), -1)
    cut_lp = torch.log_softmax(_logits(fx, safe, hook, sets["shared"], to_safe), -1)
    return {"headroom": head, "residual": {c: (score(tox[c], sets["shared"]) - floor) / head[c] for c in cats},
            "random_residual": {c: (np.mean([score(tox[c], r) for r in sets["random"]]) - floor) / head[c]
                                for c in cats},
            "drop": [[(base[b] - score(tox[b], sets["categories"][a])) / head[b] for b in cats] for a in cats],
            "safe_kl": float((base_lp.exp() * (base_lp - cut_lp)).sum(-1).mean()),
            "induced_fraction": (score(safe, sets["shared"], to_toxic) - floor) / np.mean(list(head.values()))}
