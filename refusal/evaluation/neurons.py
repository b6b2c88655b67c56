"""Refusal in MLP neurons (stage ``neurons``, after ``direction``): which neurons write the refusal direction, how much
of it SAE decoder directions span, and what steering the top neurons does.

Decomposition (exact, by linearity of the residual stream): at the direction's layer L and position p, the difference
of means Δ = mean(toxic) − mean(safe) of resid_pre (the direction's candidate-split contrast prompts) is the sum of
the embedding's difference and of every earlier layer's attention-output and MLP-output differences; an MLP output
is W_down · a, so neuron n of layer l contributes Δā[l, n] · W_down[:, n]. Each part is measured along r̂, the
selected direction: the parts sum to Δ·r̂ (``closure`` is the difference, float error only). Neurons are ranked by
their part; the top-k's share of Δ·r̂ is reported for k in ``ks``.
SAE decoders (a train run's SAEs): per SAE, its decoder directions ranked by |cos| with r̂ and the share of |r̂|²
the top-k span (weights only).
Steering on the evaluation split, the top ``steer_k`` neurons: ``ablate`` (a ← 0 at every position; toxic and hard
prompts), the same for ``steer_k`` random neurons of the same layers (seeded control), and ``induce`` (a ← its mean
toxic activation at p, every position; safe and hard prompts); refusal rates against the baseline.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from refusal.evaluation.interventions import NeuronEdit, intervene
from refusal.model.hooks import capture_activations, decoder_layers, run_until_stop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeuronSettings:
    """``evaluation.neurons`` (conf/evaluation/default.yaml, checked in refusal/evaluation/config.py)."""
    ks: tuple[int, ...]
    steer_k: int


@torch.inference_mode()
def mean_tails(ctx, prompts: list[str], hooks: list[str], n_pos: int) -> dict[str, Tensor]:
    """{hook: [n_pos, width] float64 mean activation at the last ``n_pos`` tokens of ``prompts``}."""
    device = next(ctx.model.parameters()).device
    sums: dict[str, Tensor] = {}
    for start in range(0, len(prompts), ctx.batch_size):
        enc = ctx.formatter.encode(prompts[start:start + ctx.batch_size]).to(device)
        with capture_activations(ctx.model, hooks, stop_early=True) as cache:
            run_until_stop(lambda: ctx.model(**enc.model_inputs(), use_cache=False))
        for h in hooks:
            sums[h] = sums.get(h, 0) + cache[h][:, -n_pos:].double().sum(0).cpu()
    return {h: v / len(prompts) for h, v in sums.items()}


def decompose(ctx, toxic: list[str], safe: list[str], r: Tensor, layer: int, position: int) -> dict:
    """The decomposition of Δ·r̂ at ``layer``, ``position`` (< 0) into embedding, attention and neuron parts."""
    n_pos = ctx.formatter.n_post_instruction
    p = position + n_pos
    hooks = (["blocks.0.hook_resid_pre", f"blocks.{layer}.hook_resid_pre"]
             + [f"blocks.{l}.{k}" for l in range(layer) for k in ("hook_attn_out", "mlp.hook_post")])
    tox, saf = mean_tails(ctx, toxic, hooks, n_pos), mean_tails(ctx, safe, hooks, n_pos)
    unit = r.double().cpu() / r.double().norm()

    def along(h):
        return tox[h][p] - saf[h][p]
    layers = decoder_layers(ctx.model)
    neurons = torch.stack([along(f"blocks.{l}.mlp.hook_post")
                           * (unit @ layers[l].mlp.down_proj.weight.detach().double().cpu()) for l in range(layer)]) \
        if layer else torch.zeros(0, 0, dtype=torch.float64)
    embed = float(along("blocks.0.hook_resid_pre") @ unit) if layer else 0.0
    attn = [float(along(f"blocks.{l}.hook_attn_out") @ unit) for l in range(layer)]
    total = float(along(f"blocks.{layer}.hook_resid_pre") @ unit)
    return {"total": total, "embedding": embed, "attention": attn, "neurons": neurons,
            "mean_toxic_post": {l: tox[f"blocks.{l}.mlp.hook_post"][p] for l in range(layer)},
            "closure": total - embed - sum(attn) - float(neurons.sum())}


def top_neurons(neurons: Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` (layer, neuron) pairs with the largest parts, largest first."""
    flat = neurons.flatten()
    idx = torch.argsort(flat, descending=True, stable=True)[:k].tolist()
    return [(i // neurons.shape[1], i % neurons.shape[1]) for i in idx]


def decoder_share(directions: Tensor, r: Tensor, ks: tuple[int, ...]) -> dict:
    """Directions [m, d] ranked by |cos| with r̂; {k: share of |r̂|² spanned by the top k}."""
    unit = r.double().cpu() / r.double().norm()
    dirs = directions.double().cpu()
    cos = (dirs @ unit) / dirs.norm(dim=-1).clamp_min(1e-30)
    order = torch.argsort(cos.abs(), descending=True, stable=True)
    shares = {}
    for k in ks:
        q, _ = torch.linalg.qr(dirs[order[:k]].T)
        shares[int(k)] = float((q.T @ unit).pow(2).sum())
    return {"shares": shares, "top": [{"feature": int(i), "cos": float(cos[i])} for i in order[:10].tolist()]}


def _edits(pairs: list[tuple[int, int]], mode: str, values: dict | None = None) -> list[NeuronEdit]:
    by_layer: dict[int, list[int]] = {}
    for layer, n in pairs:
        by_layer.setdefault(layer, []).append(n)
    return [NeuronEdit(f"blocks.{layer}.mlp.hook_post", torch.tensor(ns), mode,
                       0.0 if values is None else torch.stack([values[layer][n] for n in ns]).float())
            for layer, ns in sorted(by_layer.items())]


def _steer(ctx, edits: list[NeuronEdit], labels: tuple[str, ...], name: str) -> list[dict]:
    records = [x for lb in labels for x in ctx.prompts.filter(label=lb)]
    with intervene(ctx.model, edits):
        items = ctx.generate(records, name=name)
    return ctx.condition_rows(items, name)


def run_neurons(ctx, toxic: list[str], safe: list[str], direction: dict, r: Tensor, s: NeuronSettings,
                saes: dict | None = None) -> dict:
    """The stage (module doc): ``toxic``/``safe`` the direction's candidate-split contrast prompts."""
    sel = direction["selected"]
    dec = decompose(ctx, toxic, safe, r, int(sel["layer"]), int(sel["position"]))
    neurons = dec["neurons"]
    order = torch.argsort(neurons.flatten(), descending=True, stable=True)
    sorted_parts = neurons.flatten()[order]
    shares = {int(k): float(sorted_parts[:k].sum()) / dec["total"] for k in s.ks} if neurons.numel() else {}
    top = top_neurons(neurons, s.steer_k) if neurons.numel() else []
    w = {l: decoder_layers(ctx.model)[l].mlp.down_proj.weight.detach().double().cpu() for l, _ in top}
    unit = r.double().cpu() / r.double().norm()
    listing = [{"layer": l, "neuron": n, "part": float(neurons[l, n]), "share": float(neurons[l, n]) / dec["total"],
                "cos_write": float(w[l][:, n] @ unit / w[l][:, n].norm())} for l, n in top]
    rng = np.random.default_rng(ctx.seed)
    width = neurons.shape[1] if neurons.numel() else 0
    control = [(l, int(rng.integers(width))) for l, _ in top]
    base = ctx.baseline_items
    rows = ctx.condition_rows(list(base.values()), "baseline")
    if top:
        rows += _steer(ctx, _edits(top, "scale"), ("toxic", "hard"), "neurons_ablate")
        rows += _steer(ctx, _edits(control, "scale"), ("toxic", "hard"), "neurons_ablate_random")
        rows += _steer(ctx, _edits(top, "clamp", dec["mean_toxic_post"]), ("safe", "hard"), "neurons_induce")
    log.info("neurons: top %d neurons carry %.3f of the direction's difference of means", s.steer_k,
             sum(x["share"] for x in listing))
    return {"layer": sel["layer"], "position": sel["position"], "total": dec["total"], "embedding": dec["embedding"],
            "attention_total": float(sum(dec["attention"])), "mlp_total": float(neurons.sum()),
            "closure": dec["closure"], "top_k_share": shares, "top": listing, "random_control": control,
            "sae_decoders": {hook: decoder_share(sae.W_dec.detach(), r, s.ks) for hook, sae in (saes or {}).items()
                             if sae.W_dec.shape[1] == r.shape[0]},  # residual-stream SAEs only
            "rates": rows}
