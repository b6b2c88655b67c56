"""Conditional activation steering (CAST; Lee et al. 2025) with the refusal direction as the behaviour vector and one
condition per toxic category: does one behaviour vector serve every category's condition?

1. A prompt's condition representation h: the residual stream entering the condition layer (``layer``: the
   direction's selected layer, or a layer index), averaged over the post-instruction positions; μ the mean h over
   the direction's candidate-split prompts.
2. Condition vector of category c: ``estimator`` (refusal/evaluation/estimators.py) of h − μ, c's toxic prompts vs
   the safe ones, on the candidate split.
3. Score cos(h − μ, v_c); the condition fires iff score > θ_c, θ_c chosen on the ``threshold_split`` to maximise
   the balanced accuracy of c's toxic prompts against every other prompt (safe, hard and other categories' toxic).
4. On the evaluation split, for each condition (each category's, and ``any``: one of them fires) the behaviour
   vector coeff · r (r: the selected direction) is added at r's layer, every position, while generating the prompts
   on which the condition fires; the others keep their baseline responses (greedy decoding: the same tokens).
   ``always`` adds it to every prompt (steering without a condition).
Writes refusal rates per category and label for baseline, always and each condition, and each condition's firing
rate per category and label (its false triggers on safe and hard prompts).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from refusal.circuit.plots import matrix_plot
from refusal.errors import ConfigError
from refusal.evaluation.direction import residual_tails
from refusal.evaluation.estimators import estimate
from refusal.evaluation.interventions import ActAdd, intervene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CastSettings:
    """``evaluation.cast`` (conf/evaluation/default.yaml, checked in refusal/evaluation/config.py)."""
    layer: object  # "selected" or a layer index
    estimator: str  # a closed-form estimator
    threshold_split: str
    coeff: float


def representations(ctx, prompts: list[str], layer: int) -> Tensor:
    """[n, d] float64: the residual stream entering ``layer``, averaged over the post-instruction positions."""
    n_pos = ctx.formatter.n_post_instruction
    return residual_tails(ctx.model, ctx.formatter, prompts, [layer], n_pos, ctx.batch_size)[0][:, 0].mean(1)


def scores(h: Tensor, mu: Tensor, v: Tensor) -> Tensor:
    """[n] cos(h − μ, v)."""
    x = h - mu
    return (x @ v) / (x.norm(dim=-1) * v.norm()).clamp_min(1e-30)


def fires(score: Tensor, threshold: float) -> Tensor:
    """bool [n]: the condition fires strictly above its threshold."""
    return score > threshold


def best_threshold(positive: Tensor, negative: Tensor) -> tuple[float, float]:
    """(θ, balanced accuracy of ``fires`` at θ): θ among the midpoints of the sorted pooled scores (and below /
    above all of them), the first of the best."""
    pooled = torch.cat([positive, negative]).double().sort().values
    cands = torch.cat([pooled[:1] - 1, (pooled[1:] + pooled[:-1]) / 2, pooled[-1:] + 1])
    best = (float("nan"), -1.0)
    for t in cands.tolist():
        tpr = float(fires(positive, t).double().mean()) if len(positive) else 0.0
        tnr = float((~fires(negative, t)).double().mean()) if len(negative) else 0.0
        if (tpr + tnr) / 2 > best[1]:
            best = (t, (tpr + tnr) / 2)
    return best


def conditions(ctx, all_prompts, split_for_vectors: str, s: CastSettings, layer: int) -> dict:
    """{category: (v_c, θ_c, validation balanced accuracy)} and μ, from the prompt set ``all_prompts``."""
    train = all_prompts.filter(split=split_for_vectors)
    toxic, safe = list(train.filter(label="toxic")), list(train.filter(label="safe"))
    h_tox = representations(ctx, [r.prompt for r in toxic], layer)
    h_safe = representations(ctx, [r.prompt for r in safe], layer)
    mu = torch.cat([h_tox, h_safe]).mean(0)
    val = list(all_prompts.filter(split=s.threshold_split))
    if not val or not toxic or not safe:
        raise ConfigError(f"cast needs toxic and safe {split_for_vectors} prompts and {s.threshold_split} prompts "
                          f"(evaluation.cast.threshold_split={s.threshold_split!r}); this prompt set lacks them")
    h_val = representations(ctx, [r.prompt for r in val], layer)
    out = {}
    for c in sorted({r.category for r in toxic}):
        idx = [i for i, r in enumerate(toxic) if r.category == c]
        v = estimate(s.estimator, h_tox[idx] - mu, h_safe - mu)
        sc = scores(h_val, mu, v)
        pos = torch.tensor([r.label == "toxic" and r.category == c for r in val])
        theta, acc = best_threshold(sc[pos], sc[~pos])
        out[c] = {"vector": v, "threshold": theta, "val_balanced_accuracy": acc, "n_val_positive": int(pos.sum())}
    return {"mu": mu, "conditions": out}


def _steered(ctx, records, r: Tensor, layer: int, coeff: float, name: str) -> dict[str, dict]:
    if not records:
        return {}
    with intervene(ctx.model, [ActAdd(f"blocks.{layer}.hook_resid_pre", r, coeff)]):
        return {it["id"]: it for it in ctx.generate(records, name=name)}


def run_cast(ctx, all_prompts, direction: dict, r: Tensor, candidate_split: str, s: CastSettings,
             out_dir: Path) -> dict:
    """The stage (module doc); ``direction`` is the direction stage's result, ``r`` its selected vector."""
    b_layer = int(direction["selected"]["layer"])
    c_layer = b_layer if s.layer == "selected" else int(s.layer)
    cond = conditions(ctx, all_prompts, candidate_split, s, c_layer)
    records = list(ctx.prompts)
    h_eval = representations(ctx, [x.prompt for x in records], c_layer)
    firing = {c: fires(scores(h_eval, cond["mu"], v["vector"]), v["threshold"]) for c, v in cond["conditions"].items()}
    firing["any"] = torch.stack(list(firing.values())).any(0) if firing else torch.zeros(len(records), dtype=torch.bool)
    base = ctx.baseline_items
    always = _steered(ctx, records, r, b_layer, s.coeff, "cast_always")
    rows = ctx.condition_rows([base[x.id] for x in records], "baseline") + ctx.condition_rows(list(always.values()),
                                                                                            "always")
    fire_rows = []
    for name, mask in firing.items():
        on = [x for x, f in zip(records, mask.tolist()) if f]
        steered = {**always} if len(on) == len(records) else _steered(ctx, on, r, b_layer, s.coeff, f"cast_{name}")
        items = [steered.get(x.id, base[x.id]) if f else base[x.id] for x, f in zip(records, mask.tolist())]
        rows += ctx.condition_rows(items, f"cast:{name}")
        fire_rows += _fire_rows(records, mask, name)
        log.info("cast: condition %s fires on %d of %d prompts", name, len(on), len(records))
    plot = _fire_plot(fire_rows, list(firing), out_dir / "cast_firing.png")
    return {"condition_layer": c_layer, "behaviour_layer": b_layer, "coeff": s.coeff, "estimator": s.estimator,
            "threshold_split": s.threshold_split,
            "conditions": {c: {k: v for k, v in d.items() if k != "vector"} for c, d in cond["conditions"].items()},
            "firing": fire_rows, "rates": rows, "plot": str(plot)}


def _fire_rows(records, mask: Tensor, name: str) -> list[dict]:
    cells: dict[tuple[str, str], list[bool]] = {}
    for x, f in zip(records, mask.tolist()):
        cells.setdefault((x.label, x.category), []).append(bool(f))
        cells.setdefault((x.label, "all"), []).append(bool(f))
    return [{"condition": name, "label": lb, "category": c, "n": len(v), "fire_rate": float(np.mean(v))}
            for (lb, c), v in sorted(cells.items())]


def _fire_plot(rows: list[dict], names: list[str], path: Path) -> Path:
    cols = sorted({(r["label"], r["category"]) for r in rows if r["category"] != "all"})
    cell = {(r["condition"], r["label"], r["category"]): r["fire_rate"] for r in rows}
    matrix = np.array([[cell.get((n, lb, c), np.nan) for lb, c in cols] for n in names])
    return matrix_plot(matrix, names, [f"{c} ({lb})" for lb, c in cols], "CAST: share of prompts each condition "
                       "fires on", path, cmap="viridis", symmetric=False)
