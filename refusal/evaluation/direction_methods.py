"""The refusal-direction estimators that need the model, each estimator's candidates, and the comparison of
estimators at the selected layer and position (``evaluation.direction.method`` and ``compare_methods``).

caa  contrastive activation addition (Rimsky et al. 2024) with refusal as the behaviour: on every contrast prompt
     (toxic and safe), the residual stream at the last positions of the prompt followed by a refusal opening minus
     the same prompt followed by a compliance opening (``caa_openings``), averaged over prompts. The contrast is the
     response, not the prompt; its positions are the openings' last tokens.
rdo  a direction optimised by gradient descent (after Wollschläger et al. 2025), started from the
     difference-in-means candidate at the layer and position: Adam on the unit vector r̂ to minimise
     mean refusal score of toxic prompts with r̂ ablated at every layer − mean refusal score of safe prompts with
     r = |r₀| r̂ added at the layer + kl_weight · KL(safe ‖ safe with r̂ ablated), on the candidate split's prompts
     (``rdo.batch_size`` per side and step, seeded); the outlier dims stay zero. As ``method`` it refines the
     candidate the selection picked among the difference-in-means ones.
The closed-form estimators are refusal/evaluation/estimators.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from refusal.behavior.score import refusal_score
from refusal.circuit.plots import bar_panels
from refusal.evaluation.direction import DirectionSettings, Samples, residual_tails, score_direction
from refusal.evaluation.estimators import CLOSED_FORM, estimate, estimate_grid
from refusal.evaluation.interventions import ActAdd, directional_ablation, intervene
from refusal.evaluation.measure import kl_per_prompt, last_logits

log = logging.getLogger(__name__)


def caa_grid(ctx, s: DirectionSettings, samples: Samples, layers: list[int]) -> Tensor:
    """[len(layers), n_pos, d] caa candidates (module doc) at ``layers`` (a subset of the samples' layers)."""
    prompts = samples.toxic + samples.safe
    n_pos = samples.toxic_tails.shape[2]
    refuse, comply = (residual_tails(ctx.model, ctx.formatter, prompts, layers, n_pos, ctx.batch_size,
                                     [opening] * len(prompts))[0] for opening in s.caa_openings)
    keep = samples.keep[[samples.layers.index(layer) for layer in layers]][:, None, :]
    return (refuse - comply).mean(0) * keep


def method_candidates(ctx, s: DirectionSettings, samples: Samples) -> Tensor:
    """[len(layers), n_pos, d] candidates of ``s.method`` (rdo: the difference-in-means ones, refined after the
    selection by ``refine_selected``)."""
    if s.method == "caa":
        return caa_grid(ctx, s, samples, samples.layers)
    method = "dim" if s.method == "rdo" else s.method
    return estimate_grid(method, samples.toxic_tails, samples.safe_tails, s.shrinkage, s.probe_l2)


def _logits(model, formatter, prompts: list[str]) -> Tensor:
    enc = formatter.encode(prompts).to(next(model.parameters()).device)
    return model(**enc.model_inputs(), use_cache=False, logits_to_keep=1).logits[:, -1].float()


def _rdo_loss(ctx, unit: Tensor, length: float, layer: int, toxic: list[str], safe: list[str],
              s: DirectionSettings) -> tuple[Tensor, dict]:
    model, fmt, ids = ctx.model, ctx.formatter, ctx.refusal_token_ids
    with torch.no_grad():
        base = _logits(model, fmt, safe)
    with intervene(model, directional_ablation(unit, ctx.loaded.n_layers, s.ablation_hooks)):
        ablated = refusal_score(_logits(model, fmt, toxic), ids).mean()
        ablated_safe = _logits(model, fmt, safe)
    with intervene(model, [ActAdd(f"blocks.{layer}.hook_resid_pre", unit * length, s.actadd_coeff)]):
        induced = refusal_score(_logits(model, fmt, safe), ids).mean()
    kl = kl_per_prompt(base, ablated_safe).mean()
    loss = ablated - induced + s.rdo.kl_weight * kl
    return loss, {"loss": float(loss.detach()), "ablation_score": float(ablated.detach()),
                  "induce_score": float(induced.detach()),
                  "kl_safe": float(kl.detach())}


def optimise(ctx, start: Tensor, layer: int, samples: Samples, s: DirectionSettings) -> tuple[Tensor, list[dict]]:
    """(the rdo direction from ``start`` [d] at ``layer``, float64 with |start|'s length; per-step losses)."""
    length = float(start.norm())
    keep = samples.keep[samples.layers.index(layer)].float()
    v = torch.nn.Parameter((start / length).float().clone())
    opt = torch.optim.Adam([v], lr=s.rdo.lr)
    rng = np.random.default_rng(ctx.seed)
    trainable = [p.requires_grad for p in ctx.model.parameters()]
    ctx.model.requires_grad_(False)
    history = []
    try:
        with torch.enable_grad():
            for _ in range(s.rdo.steps):
                toxic, safe = ([side[i] for i in rng.choice(len(side), min(s.rdo.batch_size, len(side)), replace=False)]
                               for side in (samples.toxic, samples.safe))
                masked = v * keep
                loss, row = _rdo_loss(ctx, masked / masked.norm(), length, layer, toxic, safe, s)
                opt.zero_grad()
                loss.backward()
                opt.step()
                history.append(row)
    finally:
        for p, flag in zip(ctx.model.parameters(), trainable):
            p.requires_grad_(flag)
    final = (v * keep).detach().double()
    log.info("direction: rdo at layer %d, %d steps: loss %.3f -> %.3f", layer, s.rdo.steps,
             history[0]["loss"] if history else float("nan"), history[-1]["loss"] if history else float("nan"))
    return final / final.norm() * length, history


def _cos(a: Tensor, b: Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()).clamp_min(1e-30))


def refine_selected(ctx, selection: dict, candidates: dict[int, Tensor], samples: Samples, toxic: list[str],
                    safe: list[str], s: DirectionSettings) -> tuple[dict, Tensor]:
    """``method=rdo``: the selected difference-in-means candidate optimised, scored on the selection prompts;
    (the selection with it as ``selected``, its vector)."""
    start_row = selection["selected"]
    layer = start_row["layer"]
    start = candidates[layer][start_row["position"] + candidates[layer].shape[0]]
    r, history = optimise(ctx, start, layer, samples, s)
    safe_logits = last_logits(ctx.model, ctx.formatter, safe, ctx.batch_size)
    row = {"layer": layer, "position": start_row["position"], **score_direction(ctx, r, layer, toxic, safe,
                                                                                  safe_logits, s)}
    return {**selection, "selected": row, "filters_passed": row["passes"],
            "fallback": None if row["passes"] else "the optimised direction misses the filters",
            "rdo": {"start": start_row, "cos_with_start": _cos(r, start), "history": history}}, r


def compare_methods(ctx, s: DirectionSettings, samples: Samples, layer: int, position: int,
                    reference: tuple[Tensor, str], toxic: list[str], safe: list[str], out_dir: Path) -> tuple[dict, Tensor]:
    """Every ``compare_methods`` estimator's direction at ``layer`` and ``position`` (< 0; ``compare_at``), scored on
    the selection prompts like the candidates, with |cos| to ``reference`` (a direction at that place, and what it
    is: the selected direction, or the selected estimator's candidate there); a bar plot. (the block, the
    directions [n_methods, d] in ``compare_methods`` order)"""
    li, p = samples.layers.index(layer), position + samples.toxic_tails.shape[2]
    tox, saf = samples.toxic_tails[:, li, p], samples.safe_tails[:, li, p]
    safe_logits = last_logits(ctx.model, ctx.formatter, safe, ctx.batch_size)
    rows, vectors = [], []
    for method in s.compare_methods:
        if method in CLOSED_FORM:
            r = estimate(method, tox, saf, s.shrinkage, s.probe_l2)
        elif method == "caa":
            r = caa_grid(ctx, s, samples, [layer])[0, p]
        else:
            r = optimise(ctx, estimate("dim", tox, saf), layer, samples, s)[0]
        vectors.append(r.float())
        rows.append({"method": method, **score_direction(ctx, r, layer, toxic, safe, safe_logits, s),
                     "abs_cos_with_reference": abs(_cos(r, reference[0]))})
        log.info("direction: %s at layer %d position %d scored", method, layer, position)
    keys = {"refusal score, toxic, ablated": "ablation_score", "refusal score, safe, actadd": "induce_score",
            "KL on safe prompts, ablated": "kl_safe"}
    plot = bar_panels({name: {row["method"]: row[key] for row in rows} for name, key in keys.items()},
                      out_dir / "direction_methods.png",
                      {"refusal score, safe, actadd": s.induce_min_score, "KL on safe prompts, ablated": s.max_kl})
    return {"layer": layer, "position": position, "at": s.compare_at, "reference": reference[1], "rows": rows,
            "plot": str(plot)}, \
        torch.stack(vectors)
