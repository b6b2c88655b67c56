"""Edge attribution patching over components (Syed, Rager & Conmy 2023; EAP-IG: Hanna, Pezzelle & Belinkov 2024).

Graph (refusal/evaluation/eap_graph.py): senders = embeddings, heads, MLPs; receivers = heads, MLPs, logits; edge u→v
when u writes the residual stream before v reads it. Clean = toxic prompt i, corrupt = ``paired`` safe prompt
π(i) = i mod n_safe (the prompts of refusal/evaluation/patching.py) or the ``mean`` safe activation; only the last
``positions`` tokens (aligned from the end) are corrupted. Metric m: the refusal score at the first response position.

- ``eap``: score(u→v) = Σ_positions (a_u,corrupt − a_u,clean) · ∂m/∂x_v at the clean run, x_v = v's own copy of the
  residual stream (its gradient flows through v alone). Predicts m(v sees corrupt u) − m_clean (noising; negative =
  the edge carries refusal). One forward + one backward per batch; heads' copies cost one attention call per head.
- ``eap_ig``: the same delta times the mean gradient over K points where *every* sender's output at those tokens is
  set to a_corrupt + (k/K)(a_clean − a_corrupt), k = 1..K (interpolation at every activation, not at the embeddings:
  paired prompts of different lengths share no aligned input tokens but the template's). K = 1 is ``eap``.
- validation (``validate``): exact path patching of every edge, add the delta to v's input alone and rerun (one
  forward per edge per batch: small models only); Spearman, top-k overlap and sign agreement against it.
Scores are means over a group's toxic prompts (each category and ``all``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, List

import numpy as np
import torch
from omegaconf import MISSING
from scipy.stats import spearmanr

from refusal.circuit.plots import matrix_plot
from refusal.config import choice, flag, integer
from refusal.data.records import SPLITS
from refusal.errors import ConfigError
from refusal.evaluation.eap_graph import graph, path_patched, receiver_grads
from refusal.evaluation.patch_sites import _batches, capture, head_dim, n_heads
from refusal.evaluation.patching import CORRUPTIONS, _choices, config_keys, prompt_subsets

log = logging.getLogger(__name__)
METHODS = ("eap", "eap_ig")


@dataclass(frozen=True)
class EapSettings:
    """``evaluation.eap``."""
    split: str = "train"
    n_per_category: int = 4  # toxic prompts per category (seeded; the patching stage's subset)
    n_safe: int = 16
    corruption: str = "paired"  # paired | mean
    positions: object = "post_instruction"  # or an int: the last n prompt tokens
    methods: tuple = METHODS
    ig_steps: int = 5  # K of eap_ig
    top_k: int = 20  # edges reported per group; also the k of the top-k overlap
    validate: bool = False  # exact path patching of every edge (one forward per edge per batch)

    @classmethod
    def from_config(cls, node, key: str = "evaluation.eap") -> "EapSettings":
        d = config_keys(node, key, [f.name for f in fields(cls)])
        pos = d["positions"] if d["positions"] == "post_instruction" else integer(f"{key}.positions", d["positions"], 1)
        return cls(choice(f"{key}.split", d["split"], SPLITS), integer(f"{key}.n_per_category", d["n_per_category"], 1),
                   integer(f"{key}.n_safe", d["n_safe"], 1), choice(f"{key}.corruption", d["corruption"], CORRUPTIONS),
                   pos, _choices(f"{key}.methods", d["methods"], METHODS), integer(f"{key}.ig_steps", d["ig_steps"], 1),
                   integer(f"{key}.top_k", d["top_k"], 1), flag(f"{key}.validate", d["validate"]))


@dataclass
class EapSchema:
    """The Hydra schema of ``evaluation.eap`` (values in conf/evaluation/*.yaml)."""
    split: str = MISSING
    n_per_category: int = MISSING
    n_safe: int = MISSING
    corruption: str = MISSING
    positions: Any = MISSING  # post_instruction | int
    methods: List[str] = MISSING
    ig_steps: int = MISSING
    top_k: int = MISSING
    validate: bool = MISSING


def eap_prompts(prompts, s: EapSettings, seed: int) -> tuple[list, list]:
    """The patching stage's subsets for the eap settings (:func:`refusal.evaluation.patching.prompt_subsets`)."""
    return prompt_subsets(prompts, s.split, s.n_per_category, s.n_safe, seed, "evaluation.eap")


def native(acts, send, dh: int) -> list[torch.Tensor]:
    """Each sender's own activation [n, n_pos, W] (input: embeddings; head: its z slice; mlp: its output)."""
    return [acts.resid[:, 0] if u.kind == "input" else acts.mlp[:, u.layer] if u.kind == "mlp"
            else acts.z[:, u.layer, :, u.index * dh:(u.index + 1) * dh] for u in send]


def written(model, send, values: list[torch.Tensor]) -> torch.Tensor:
    """[S, n, n_pos, d]: what each sender writes into the residual stream, from its native activation."""
    dh = head_dim(model)
    out = []
    for u, v in zip(send, values):
        if u.kind == "head":
            w = model.model.layers[u.layer].self_attn.o_proj.weight[:, u.index * dh:(u.index + 1) * dh]
            v = v.to(w.device, w.dtype) @ w.T
        out.append(v.float().cpu())
    return torch.stack(out)


def attribute(ctx, toxic: list[str], clean: list, delta_native: list, send, recv, mask, n_pos: int,
              steps: int) -> torch.Tensor:
    """[n, S, R] float64 per-prompt edge scores (masked); ``steps`` = 1: eap, K: eap_ig."""
    delta = written(ctx.model, send, delta_native)
    out = []
    for start, enc in _batches(ctx, toxic):
        rows = slice(start, start + enc.input_ids.shape[0])
        grad = 0
        for k in range(1, steps + 1):
            c = 1.0 - k / steps
            targets = None if c == 0 else {u: clean[j][rows] + c * delta_native[j][rows] for j, u in enumerate(send)}
            grad = grad + receiver_grads(ctx, enc, recv, n_pos, targets)[0] / steps
        out.append(torch.einsum("sbpd,rbpd->bsr", delta[:, rows].double(), grad.double()) * mask)
    return torch.cat(out)


def exact_edges(ctx, toxic: list[str], delta: torch.Tensor, recv, mask, chunk: int = 64) -> torch.Tensor:
    """[n, S, R] float64 exact path patching effects m(v sees corrupt u) − m_clean (0 off the edges); one forward
    per receiver per batch, its senders' patches stacked along the batch (at most ``chunk`` rows)."""
    out = torch.zeros(len(toxic), *mask.shape, dtype=torch.float64)
    for start, enc in _batches(ctx, toxic):
        B = enc.input_ids.shape[0]
        rows = slice(start, start + B)
        base = path_patched(ctx, enc, None, delta[:1, rows])[0]
        for r, v in enumerate(recv):
            senders = mask[:, r].nonzero()[:, 0].tolist()
            for i in range(0, len(senders), max(1, chunk // B)):
                part = senders[i:i + max(1, chunk // B)]
                out[rows, part, r] = (path_patched(ctx, enc, v, delta[part, rows]) - base).T
    return out


def agreement(pred: np.ndarray, exact: np.ndarray, k: int) -> dict:
    """Spearman, top-k overlap by |score|, and sign agreement on the edges with |exact| ≥ 1% of the largest."""
    k = min(k, len(exact))
    top = lambda x: set(np.argsort(-np.abs(x), kind="stable")[:k].tolist())  # noqa: E731
    big = np.abs(exact) >= 0.01 * np.abs(exact).max()
    return {"spearman": float(spearmanr(pred, exact).statistic), "k": k,
            "top_k_overlap": len(top(pred) & top(exact)) / k,
            "sign_agreement": float(np.mean(np.sign(pred[big]) == np.sign(exact[big]))) if big.any() else None}


def _summaries(per_prompt: torch.Tensor, groups: dict, send, recv, mask, top_k: int) -> tuple[dict, dict]:
    tops, comps = {}, {}
    edges = mask.nonzero().tolist()
    for g, idx in groups.items():
        m = per_prompt[idx].mean(0)
        vals = np.array([float(m[s, r]) for s, r in edges])
        order = np.argsort(-np.abs(vals), kind="stable")[:top_k]
        tops[g] = [{"sender": send[edges[i][0]].label, "receiver": recv[edges[i][1]].label, "score": float(vals[i])}
                   for i in order]
        comps[g] = {"out": {u.label: float(m[s].sum()) for s, u in enumerate(send)},
                    "in": {v.label: float(m[:, r].sum()) for r, v in enumerate(recv)}}
    return tops, comps


def eap_plot(top: list[dict], title: str, path: Path) -> str:
    """Heatmap sender × receiver of the top edges' scores (blank: not a top edge)."""
    rows, cols = list(dict.fromkeys(e["sender"] for e in top)), list(dict.fromkeys(e["receiver"] for e in top))
    m = np.full((len(rows), len(cols)), np.nan)
    for e in top:
        m[rows.index(e["sender"]), cols.index(e["receiver"])] = e["score"]
    return str(matrix_plot(m, rows, cols, title, path, xlabel="receiver", ylabel="sender"))


def edge_inputs(ctx, toxic: list[str], safe: list[str], corruption: str, n_pos: int) -> dict:
    """The graph (send, recv, mask), the senders' clean native activations and their corrupt − clean deltas (lists
    of [n, n_pos, W]), and the clean and corrupt scores [n] of ``toxic`` paired with ``safe`` (π(i) = i mod n)."""
    layers = list(range(ctx.loaded.n_layers))
    send, recv, mask = graph(len(layers), n_heads(ctx.model))
    clean_acts, clean_m = capture(ctx, toxic, layers, n_pos, "hook_resid_pre")
    safe_acts, safe_m = capture(ctx, safe, layers, n_pos, "hook_resid_pre")
    pair = [i % len(safe) for i in range(len(toxic))]
    corrupt = safe_acts.select(pair) if corruption == "paired" else safe_acts.mean()
    dh = head_dim(ctx.model)
    clean, bad = native(clean_acts, send, dh), native(corrupt, send, dh)
    return {"send": send, "recv": recv, "mask": mask, "clean": [c.clone() for c in clean],
            "delta": [(b - c).clone() for b, c in zip(bad, clean)], "clean_m": clean_m,
            "corrupt_m": safe_m[pair] if corruption == "paired" else safe_m.mean().expand(len(toxic))}


def run_eap(ctx, prompts, s: EapSettings, run_dir: Path) -> dict:
    """The module doc's attributions on ``prompts`` (a PromptSet; its ``s.split``), figures written into ``run_dir``;
    a JSON-able dict: top edges and per-component in/out sums per method and group, validation when asked."""
    start = time.perf_counter()
    n_pos = ctx.formatter.n_post_instruction if s.positions == "post_instruction" else int(s.positions)
    toxic_r, safe_r = eap_prompts(prompts, s, ctx.seed)
    toxic, cats = [r.prompt for r in toxic_r], [r.category for r in toxic_r]
    g = edge_inputs(ctx, toxic, [r.prompt for r in safe_r], s.corruption, n_pos)
    send, recv, mask = g["send"], g["recv"], g["mask"]
    groups = {"all": list(range(len(toxic))),
              **{c: [i for i, x in enumerate(cats) if x == c] for c in sorted(set(cats))}}
    result = {"split": s.split, "corruption": s.corruption, "n_positions": n_pos, "methods": list(s.methods),
              "ig_steps": s.ig_steps, "n_toxic": len(toxic), "n_safe": len(safe_r), "categories": sorted(set(cats)),
              "n_senders": len(send), "n_receivers": len(recv), "n_edges": int(mask.sum()),
              "baseline": {k: {"n": len(i), "m_clean": float(g["clean_m"][i].mean()),
                               "m_corrupt": float(g["corrupt_m"][i].mean())} for k, i in groups.items()},
              "top_edges": {}, "components": {}, "plots": {}, "seconds_per_method": {}, "validation": None}
    scores = {}
    for method in s.methods:
        t0 = time.perf_counter()
        scores[method] = attribute(ctx, toxic, g["clean"], g["delta"], send, recv, mask, n_pos,
                                   1 if method == "eap" else s.ig_steps)
        result["seconds_per_method"][method] = time.perf_counter() - t0
        result["top_edges"][method], result["components"][method] = _summaries(scores[method], groups, send, recv,
                                                                               mask, s.top_k)
        result["plots"][method] = eap_plot(result["top_edges"][method]["all"], f"{method}: top edges (pooled)",
                                           Path(run_dir) / f"eap_{method}.png")
        log.info("eap: %s, %d edges x %d prompts in %.1fs", method, int(mask.sum()), len(toxic),
                 result["seconds_per_method"][method])
    if s.validate:
        t0 = time.perf_counter()
        exact = exact_edges(ctx, toxic, written(ctx.model, send, g["delta"]), recv, mask).mean(0)[mask].numpy()
        result["validation"] = {m: agreement(v.mean(0)[mask].numpy(), exact, s.top_k) for m, v in scores.items()}
        result["validation"]["seconds_exact"] = time.perf_counter() - t0
    result["seconds"] = time.perf_counter() - start
    return result
