"""Feature dashboards for every feature node of every circuit of a discover run: ``dashboards.json``.

Per distinct (hook, feature) of any circuit (a node at several positions or in several circuits is one dashboard):

- ``top_examples``: the prompts where the feature peaks highest, each with its largest activation and the index of
  the token holding it in the prompt's chat-formatted tokens (``prompts[<id>].tokens``, decoded one token at a
  time, so a report can highlight it); ``token_index`` is None for a store of prompt means.
- ``activation``: over every stored token, the share with activation > 0 (``frequency``) and the mean activation
  (zeros included); ``by_group``: the same per (category, label) of the prompts, with the token counts.
- ``attribution``: the node's attribution in each circuit, ``{kind: {category: value}}`` (summed over the node's
  positions when the circuit keeps a node per position; None where the circuit lacks it).
- ``logits``: the decoder direction's direct effect on the output logits, ``W_dec[f] @ W_U``, top ``promoted``
  and ``suppressed`` tokens. For ``mlp.hook_post`` the direction is first mapped to the residual stream by the
  layer's ``down_proj``. On the MLP-neuron basis (``circuit.basis: neurons``) a node is one neuron of
  ``mlp.hook_post``: its activation is the neuron's value act(gate)·up, its direction the one-hot e_f, so its logit
  effect is down_proj's column f through the unembedding. The final norm is taken as linear at the direction: its
  scale 1/rms(x) depends on the whole residual, is positive and the same for every token, so it is left out (values
  are in units of a unit-rms residual); its weight (gain) is applied, and a LayerNorm also centres the direction.

Error nodes (the SAE's reconstruction error; exactly 0 on the neuron basis, never in a circuit) have no decoder
direction and no activation: they get no dashboard, and ``error_nodes`` lists them. The output is deterministic:
keys sorted, floats rounded as in the circuit files, ties broken by prompt order and token id.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from refusal.circuit.circuit import rnd
from refusal.circuit.dashboard_stats import DashboardSettings, FeatureStats
from refusal.circuit.neurons import is_neuron_basis
from refusal.model.hooks import decoder_layers
from refusal.utils.io import stable_hash

VERSION = 1
ERROR_REASON = "error nodes (the SAE reconstruction error) have no decoder direction or activation: no dashboard"


def node_key(hook: str, feature: int | str) -> str:
    """``<hook>-<feature>`` with every run of characters other than letters, digits and ``_`` made one ``-``."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", f"{hook}-{feature}")


def circuit_nodes(circuits: list[dict]) -> tuple[dict[str, list[int]], dict[str, list[str]], dict]:
    """(features by hook, sorted; {hook: circuits (``kind/category``) with its error node}; attribution
    {(hook, feature): {kind: {category: summed attribution}}})."""
    features: dict[str, set[int]] = {}
    errors: dict[str, set[str]] = {}
    attribution: dict[tuple[str, int], dict] = {}
    for c in circuits:
        for n in c["nodes"]:
            if n["feature"] == "error":
                errors.setdefault(n["hook"], set()).add(f"{c['kind']}/{c['category']}")
                continue
            features.setdefault(n["hook"], set()).add(int(n["feature"]))
            cell = attribution.setdefault((n["hook"], int(n["feature"])), {}).setdefault(c["kind"], {})
            cell[c["category"]] = (cell.get(c["category"]) or 0.0) + (n["attribution"] or 0.0)
    return ({h: sorted(f) for h, f in sorted(features.items())}, {h: sorted(v) for h, v in sorted(errors.items())},
            attribution)


@torch.no_grad()
def logit_effects(model: nn.Module, hook: str, directions: torch.Tensor) -> torch.Tensor:
    """[F, vocab] direct logit effects of decoder directions [F, d] at ``hook`` (see the module docstring)."""
    w_u = model.get_output_embeddings().weight
    d = directions.to(w_u.device, torch.float32)
    if hook.endswith("mlp.hook_post"):
        layer = int(hook.split(".")[1])
        d = d @ decoder_layers(model)[layer].mlp.down_proj.weight.float().T
    norm = getattr(getattr(model, "model", None), "norm", None)
    if isinstance(norm, nn.LayerNorm):
        d = d - d.mean(-1, keepdim=True)
    if getattr(norm, "weight", None) is not None:
        d = d * norm.weight.float()
    return (d @ w_u.float().T).cpu()


def decoder_rows(sae, feats: list[int]) -> torch.Tensor:
    """[F, d] the directions the features write at their hook: an SAE's decoder rows; for a neuron (the identity
    basis) the one-hot row e_f."""
    if is_neuron_basis(sae):
        return torch.zeros(len(feats), sae.d_sae).scatter_(1, torch.tensor(feats)[:, None], 1.0)
    return sae.W_dec[torch.tensor(feats)].detach().cpu()


def _top_tokens(values: torch.Tensor, k: int, decode) -> dict:
    out = {}
    for name, sign in (("promoted", -1.0), ("suppressed", 1.0)):
        ids = torch.sort(sign * values, stable=True).indices[:k].tolist()
        out[name] = [{"token": decode(i), "token_id": i, "value": rnd(float(values[i]))} for i in ids]
    return out


def _groups(prompt_rows: list[dict]) -> tuple[list[tuple[str, str]], list[int]]:
    groups = sorted({(r["category"], r["label"]) for r in prompt_rows})
    index = {g: i for i, g in enumerate(groups)}
    return groups, [index[(r["category"], r["label"])] for r in prompt_rows]


def _activation_tables(stats: FeatureStats, hook: str, j: int, groups) -> tuple[dict, list[dict]]:
    n, act, tot = stats.n_tokens, stats.active[hook][:, j], stats.total[hook][:, j]
    total_n = float(n.sum())
    overall = {"n_tokens": int(total_n), "frequency": rnd(float(act.sum()) / total_n) if total_n else None,
               "mean": rnd(float(tot.sum()) / total_n) if total_n else None}
    by_group = [{"category": c, "label": lb, "n_tokens": int(n[g]),
                 "frequency": rnd(float(act[g] / n[g])) if n[g] else None,
                 "mean": rnd(float(tot[g] / n[g])) if n[g] else None} for g, (c, lb) in enumerate(groups)]
    return overall, by_group


def build_dashboards(circuits: list[dict], saes: dict, model: nn.Module, tokenizer, prompt_tokens,
                     prompt_rows: list[dict], batches, settings: DashboardSettings, meta: dict) -> dict:
    """The dashboards (a JSON-able dict). ``saes``: {hook: HookedSAE}; ``prompt_rows``: {id, category, label, split}
    of each prompt, in the order ``batches`` index them (:mod:`refusal.circuit.dashboard_stats`);
    ``prompt_tokens(prompt_id) -> [token ids]`` of its chat-formatted prompt; ``meta``: kept as is (where the
    activations came from, hashes)."""
    features, errors, attribution = circuit_nodes(circuits)
    groups, group_of = _groups(prompt_rows)
    stats = FeatureStats(features, group_of, len(groups)).add(saes, batches)
    names = sorted({(c["kind"], c["category"]) for c in circuits})
    decode = lambda i: tokenizer.decode([i])  # noqa: E731
    nodes, used = {}, set()
    for hook, feats in features.items():
        effects = logit_effects(model, hook, decoder_rows(saes[hook].sae, feats))
        for j, f in enumerate(feats):
            overall, by_group = _activation_tables(stats, hook, j, groups)
            examples = [{**{k: prompt_rows[p][k] for k in ("category", "label", "split")},
                         "prompt_id": prompt_rows[p]["id"], "activation": rnd(v),
                         "token_index": pos if pos >= 0 else None}
                        for p, v, pos in stats.top_prompts(hook, j, settings.top_examples)]
            used.update(e["prompt_id"] for e in examples)
            attr = attribution[(hook, f)]  # every circuit of each kind: its value, None where it lacks the node
            nodes[node_key(hook, f)] = {
                "key": node_key(hook, f), "hook": hook, "layer": int(hook.split(".")[1]), "feature": f,
                "activation": overall, "by_group": by_group, "top_examples": examples,
                "attribution": {kind: {c: rnd(attr.get(kind, {}).get(c)) for kk, c in names if kk == kind}
                                for kind in sorted({kind for kind, _ in names})},
                "logits": _top_tokens(effects[j], settings.top_tokens, decode)}
    return {"version": VERSION, **meta, "settings": {"top_examples": settings.top_examples,
                                                     "top_tokens": settings.top_tokens},
            "n_tokens": int(stats.n_tokens.sum()), "nodes": nodes,
            "prompts": {p: {"tokens": [decode(i) for i in prompt_tokens(p)]} for p in sorted(used)},
            "error_nodes": [{"hook": h, "circuits": c, "reason": ERROR_REASON} for h, c in errors.items()]}


def inputs_hash(config_hash: str, circuits: list[dict], source: dict) -> str:
    """What a dashboards.json depends on: the run's config, the circuits' nodes and the activations' source."""
    nodes = sorted((c["kind"], c["category"], n["id"], n["attribution"]) for c in circuits for n in c["nodes"])
    return stable_hash({"config": config_hash, "nodes": nodes, "source": source, "version": VERSION})
