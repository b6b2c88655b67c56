"""The refusal direction (Arditi et al. 2024), a reference method to compare the circuits with: one direction in the
residual stream that mediates refusal.

1. Candidates: r[l, p] = the ``method`` estimate (default ``dim``: mean(toxic) − mean(safe); the others:
   refusal/evaluation/estimators.py and direction_methods.py) of the residual stream at the input of layer l
   (``blocks.{l}.hook_resid_pre``) and post-instruction position p (aligned from the end of the prompt), on the
   ``candidate_split`` prompts (label toxic vs label safe; with ``filter_by_score`` only the toxic prompts the model
   refuses, refusal score > 0, and the safe ones it answers, score < 0, here and in the selection), for the scored
   layers only: those of ``candidate_layers`` (a layer spec; all by default) below max_layer_fraction · n_layers.
2. Selection on the ``selection_split`` (at most ``n_selection_prompts`` per label): drop zero candidates (at
   layer 0 the post-instruction tokens, the same template tokens in every prompt, have identical embeddings);
   for the rest measure the mean refusal score on toxic prompts with r ablated
   everywhere (x ← x − (x·r̂)r̂ at ``ablation_hooks`` of every layer, every position), the KL divergence of the
   next-token distribution on safe prompts under that ablation, and the mean refusal score on safe prompts with
   r added at layer l (x ← x + actadd_coeff·r at resid_pre, every position). Keep candidates with KL ≤ max_kl and
   induced score > induce_min_score; pick the one whose ablation lowers refusal most. If none passes,
   ``filters_passed`` is false and the pick is made among the candidates with KL ≤ max_kl (the model stays intact),
   or, if there are none, among all layer-filtered candidates (``fallback`` says which). The layer scan
   (``direction_layers.png``) plots the three measures of every candidate by layer and position.
3. On the evaluation split: refusal rates (generated, judged) and scores with CIs under ablation (toxic, hard,
   safe) and actadd (safe, hard), the KL on safe prompts under ablation (all of them, and those the model answers
   unintervened), against the unintervened baseline.
4. Per-category directions at the selected (layer, position): mean(toxic of c) − mean(safe), their cosine matrix
   and each one's cosine with the selected direction.
5. Optional: the ``compare_methods`` estimators scored at the selected (layer, position) (table and plot), and
   ``export``: the direction orthogonalised out of the weights, written as a model dir and measured
   (refusal/evaluation/abliterate.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from refusal.behavior.score import refusal_score
from refusal.circuit.plots import layer_scan_plot
from refusal.errors import ConfigError
from refusal.evaluation.interventions import ActAdd, directional_ablation, intervene
from refusal.evaluation.measure import kl_per_prompt, last_logits
from refusal.model.hooks import parse_layers, resid_pre_batches
from refusal.utils.io import stable_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RdoSettings:
    """``evaluation.direction.rdo``: the gradient-optimised estimator (refusal/evaluation/direction_methods.py)."""
    steps: int
    lr: float
    batch_size: int
    kl_weight: float


@dataclass(frozen=True)
class DirectionSettings:
    """``evaluation.direction`` (values: conf/evaluation/default.yaml, checked in refusal/evaluation/config.py)."""
    candidate_split: str
    selection_split: str
    n_selection_prompts: int
    ablation_hooks: tuple[str, ...]
    max_kl: float
    max_layer_fraction: float
    induce_min_score: float
    actadd_coeff: float
    candidate_layers: object  # layer spec: the layers whose candidates are scored (before max_layer_fraction)
    filter_by_score: bool  # contrast only toxic prompts the model refuses (score > 0), safe ones it answers (< 0)
    outlier_factor: float  # > 0: zero candidates on residual dims with RMS > this x the layer's median RMS
    method: str  # the estimator (refusal/evaluation/estimators.py, direction_methods.py)
    compare_methods: tuple[str, ...]  # also scored at one layer and position (compare_at)
    compare_at: str  # selected | strongest (the candidate whose ablation lowers refusal most, filters ignored)
    shrinkage: object  # whitened_dim, lda: "auto" (Ledoit-Wolf) or a number in [0, 1]
    probe_l2: float  # probe: L2 weight
    caa_openings: tuple[str, str]  # caa: (refusal, compliance) response openings
    rdo: RdoSettings
    export: bool  # write the abliterated model (refusal/evaluation/abliterate.py) and measure it


@torch.inference_mode()
def residual_tails(model, formatter, prompts: list[str], layers: list[int], n_pos: int, batch_size: int,
                   responses: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """One pass over ``prompts`` (each followed by its entry of ``responses`` when given): ([n, len(layers), n_pos, d]
    float64 residual stream (resid_pre) at the last ``n_pos`` tokens of each, [len(layers), d] float64
    root-mean-square per dimension over every real (unpadded) token, the chat template's included)."""
    if not prompts:
        raise ConfigError("a direction estimate needs prompts on both sides; one side is empty")
    tails, squares, count = [], 0, 0
    for enc, acts in resid_pre_batches(model, formatter, prompts, layers, batch_size, responses):
        real = enc.attention_mask.bool()
        tails.append(torch.stack([a[:, -n_pos:].double() for a in acts], 1).cpu())
        squares = squares + torch.stack([a[real].double().pow(2).sum(0) for a in acts]).cpu()
        count += int(real.sum())
    return torch.cat(tails), (squares / count).sqrt()


def residual_stats(model, formatter, prompts: list[str], layers: list[int], n_pos: int,
                   batch_size: int) -> tuple[Tensor, Tensor]:
    """([len(layers), n_pos, d] float64 mean residual stream at the last ``n_pos`` prompt tokens, [len(layers), d]
    RMS per dimension over every real token): ``residual_tails`` averaged over prompts."""
    tails, rms = residual_tails(model, formatter, prompts, layers, n_pos, batch_size)
    return tails.mean(0), rms


def tail_means(model, formatter, prompts: list[str], layers: list[int], n_pos: int, batch_size: int) -> Tensor:
    """[len(layers), n_pos, d] float64 mean residual stream (resid_pre) at the last ``n_pos`` prompt tokens."""
    return residual_stats(model, formatter, prompts, layers, n_pos, batch_size)[0]


def outlier_dims(rms: Tensor, factor: float) -> Tensor:
    """bool [len(layers), d]: the dims whose RMS exceeds ``factor`` x their layer's median RMS."""
    return rms > factor * rms.median(dim=-1, keepdim=True).values


def _subset(records: list, n: int, seed: int, tag: str) -> list:
    if len(records) <= n:
        return records
    idx = np.sort(np.random.default_rng([seed, int(stable_hash(tag), 16)]).choice(len(records), n, replace=False))
    return [records[i] for i in idx]


def _mean_score(ctx, prompts: list[str]) -> tuple[float, Tensor]:
    logits = last_logits(ctx.model, ctx.formatter, prompts, ctx.batch_size)
    return float(refusal_score(logits, ctx.refusal_token_ids).mean()), logits


def scored_layers(s: DirectionSettings, n_layers: int) -> list[int]:
    """The layers whose candidates are computed and scored: ``candidate_layers`` below max_layer_fraction · n_layers."""
    layers = [layer for layer in parse_layers(s.candidate_layers, n_layers) if layer < s.max_layer_fraction * n_layers]
    if not layers:
        raise ConfigError(f"evaluation.direction.candidate_layers={s.candidate_layers!r} with max_layer_fraction="
                          f"{s.max_layer_fraction} leaves no layer below {s.max_layer_fraction} * {n_layers}")
    return layers


def score_direction(ctx, r: Tensor, layer: int, toxic: list[str], safe: list[str], safe_logits: Tensor,
                    s: DirectionSettings) -> dict:
    """The selection's measures of ``r``: mean refusal score of ``toxic`` with r̂ ablated at every layer, the KL on
    ``safe`` under that ablation (against ``safe_logits``, unintervened), the mean refusal score of ``safe`` with r
    added at ``layer``, and whether it passes the filters."""
    r = r.float()
    with intervene(ctx.model, directional_ablation(r, ctx.loaded.n_layers, s.ablation_hooks)):
        abl, _ = _mean_score(ctx, toxic)
        _, new_safe = _mean_score(ctx, safe)
    with intervene(ctx.model, [ActAdd(f"blocks.{layer}.hook_resid_pre", r, s.actadd_coeff)]):
        induce, _ = _mean_score(ctx, safe)
    kl = float(kl_per_prompt(safe_logits, new_safe).mean())
    return {"ablation_score": abl, "kl_safe": kl, "induce_score": induce, "norm": float(r.norm()),
            "passes": kl <= s.max_kl and induce > s.induce_min_score}


def select_direction(ctx, candidates: dict[int, Tensor], toxic: list[str], safe: list[str],
                     s: DirectionSettings) -> dict:
    """Score the candidates ({layer: [n_pos, d]}) of the scored layers on the selection prompts and pick one (see
    the module doc)."""
    n_layers = ctx.loaded.n_layers
    layers = scored_layers(s, n_layers)
    base_toxic, _ = _mean_score(ctx, toxic)
    base_safe, safe_logits = _mean_score(ctx, safe)
    rows = []
    tiny = 1e-6 * max(float(candidates[layer].norm(dim=-1).max()) for layer in layers)
    for layer in layers:
        n_pos = candidates[layer].shape[0]
        for p in range(n_pos):
            r = candidates[layer][p].float()
            if float(r.norm()) <= tiny:  # e.g. layer 0: the same template tokens in every prompt
                continue
            rows.append({"layer": layer, "position": p - n_pos,
                         **score_direction(ctx, r, layer, toxic, safe, safe_logits, s)})
        log.info("direction: layer %d scored (%d of %d layers)", layer, layers.index(layer) + 1, len(layers))
    if not rows:
        raise ConfigError(f"evaluation.direction.candidate_layers={s.candidate_layers!r} with max_layer_fraction="
                          f"{s.max_layer_fraction} leaves no layer with a non-zero difference-in-means candidate "
                          f"(scored layers: {layers})")
    passing = [r for r in rows if r["passes"]]
    low_kl = [r for r in rows if r["kl_safe"] <= s.max_kl]
    pool, fallback = ((passing, None) if passing else (low_kl, "induce_min_score relaxed") if low_kl
                      else (rows, "max_kl and induce_min_score relaxed"))
    best = min(pool, key=lambda r: (r["ablation_score"], r["layer"], r["position"]))
    return {"candidates": rows, "selected": best, "filters_passed": bool(passing), "fallback": fallback,
            "baseline": {"toxic_score": base_toxic, "safe_score": base_safe}}


def cosines(vectors: Tensor) -> np.ndarray:
    v = vectors.double()
    n = v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return ((v / n) @ (v / n).T).numpy()


def contrast(ctx, records, s: DirectionSettings, split: str) -> tuple[list, list]:
    """(toxic, safe) records of ``split``; with ``filter_by_score`` only the toxic ones the model refuses (refusal
    score > 0) and the safe ones it answers (score < 0), scored on the model being evaluated."""
    sel = records.filter(split=split)
    toxic, safe = list(sel.filter(label="toxic")), list(sel.filter(label="safe"))
    if s.filter_by_score:
        kept = []
        for side, keep in ((toxic, lambda x: x > 0), (safe, lambda x: x < 0)):
            scores = refusal_score(last_logits(ctx.model, ctx.formatter, [r.prompt for r in side], ctx.batch_size),
                                   ctx.refusal_token_ids) if side else torch.zeros(0)
            kept.append([r for r, x in zip(side, scores.tolist()) if keep(x)])
        log.info("direction: filter_by_score keeps %d of %d toxic (refused) and %d of %d safe (answered) %s prompts",
                 len(kept[0]), len(toxic), len(kept[1]), len(safe), split)
        toxic, safe = kept
    if not toxic or not safe:
        raise ConfigError(f"the {split} split has no {'toxic' if not toxic else 'safe'} prompts to contrast"
                          + (" left by evaluation.direction.filter_by_score=true (toxic: score > 0, safe: < 0); "
                             "set it false or use another split" if s.filter_by_score else ""))
    return toxic, safe


def candidate_samples(ctx, prompts, s: DirectionSettings, layers: list[int]
                      ) -> tuple[Samples, dict[str, Tensor], Tensor]:
    """(the ``candidate_split``'s contrast prompts and their residual stream at ``layers``, with ``outlier_factor``
    the outlier dims zeroed; {category: mean toxic − mean safe} [len(layers), n_pos, d]; outlier dims bool
    [len(layers), d])."""
    n_pos = ctx.formatter.n_post_instruction
    toxic, safe_records = contrast(ctx, prompts, s, s.candidate_split)
    tox_prompts, safe = [r.prompt for r in toxic], [r.prompt for r in safe_records]
    log.info("direction: %s candidates at layers %s from %d toxic and %d safe %s prompts", s.method, layers,
             len(toxic), len(safe), s.candidate_split)
    tox_tails, _ = residual_tails(ctx.model, ctx.formatter, tox_prompts, layers, n_pos, ctx.batch_size)
    safe_tails, safe_rms = residual_tails(ctx.model, ctx.formatter, safe, layers, n_pos, ctx.batch_size)
    outliers = (outlier_dims(safe_rms, s.outlier_factor) if s.outlier_factor > 0
                else torch.zeros_like(safe_rms, dtype=torch.bool))
    if outliers.any():
        log.info("direction: zeroing the candidates' outlier dims (RMS > %g x median) %s", s.outlier_factor,
                 dims_by_layer(outliers, layers))
    keep = (~outliers).double()
    tox_tails, safe_tails = tox_tails * keep[None, :, None], safe_tails * keep[None, :, None]
    safe_mean = safe_tails.mean(0)
    cats = sorted({r.category for r in toxic})
    per_cat = {c: tox_tails[[i for i, r in enumerate(toxic) if r.category == c]].mean(0) - safe_mean for c in cats}
    return Samples(tox_prompts, safe, tox_tails, safe_tails, keep, layers), per_cat, outliers


def dims_by_layer(outliers: Tensor, layers: list[int]) -> dict[int, list[int]]:
    """{layer: its outlier dims} of a bool [len(layers), d] mask."""
    return {layer: torch.nonzero(outliers[i]).flatten().tolist() for i, layer in enumerate(layers)}


@dataclass
class Samples:
    """The candidate split's contrast prompts and their residual stream at the scored layers' last positions,
    the outlier dims zeroed (``keep``: [len(layers), d], 1 kept, 0 zeroed)."""
    toxic: list[str]
    safe: list[str]
    toxic_tails: Tensor  # [n, len(layers), n_pos, d] float64
    safe_tails: Tensor
    keep: Tensor
    layers: list[int]


def selection_prompts(ctx, prompts, s: DirectionSettings) -> tuple[list[str], list[str]]:
    """(toxic, safe) prompts of the ``selection_split``, at most ``n_selection_prompts`` each, seeded."""
    by_label = dict(zip(("toxic", "safe"), contrast(ctx, prompts, s, s.selection_split)))
    toxic, safe = ([r.prompt for r in _subset(by_label[label], s.n_selection_prompts, ctx.seed, label)]
                   for label in ("toxic", "safe"))
    return toxic, safe


def held_out_measures(ctx, r: Tensor, layer: int, s: DirectionSettings) -> dict:
    """Refusal rates under ablation and actadd on the evaluation split, and the KL on its safe prompts: on all of
    them (``kl_safe``) and on those the model answers unintervened (``kl_safe_answered``, judged on the baseline
    responses): on a safe prompt the model refuses, the ablation removing that refusal is the direction's effect,
    not damage, and one such prompt can carry the mean."""
    toxic, hard, safe = (list(ctx.prompts.filter(label=lb)) for lb in ("toxic", "hard", "safe"))
    base = ctx.baseline_items
    with intervene(ctx.model, directional_ablation(r, ctx.loaded.n_layers, s.ablation_hooks)):
        ablated = ctx.generate(toxic + hard + safe, name="direction_ablation")
        ablated_safe_logits = last_logits(ctx.model, ctx.formatter, [x.prompt for x in safe], ctx.batch_size)
    with intervene(ctx.model, [ActAdd(f"blocks.{layer}.hook_resid_pre", r, s.actadd_coeff)]):
        added = ctx.generate(safe + hard, name="direction_actadd")
    base_safe_logits = last_logits(ctx.model, ctx.formatter, [x.prompt for x in safe], ctx.batch_size)
    kl = kl_per_prompt(base_safe_logits, ablated_safe_logits).numpy() if safe else np.zeros(0)
    answered = np.array([not base[x.id]["refused"] for x in safe], dtype=bool)
    return {"kl_safe": _mean_with_ci(ctx, kl, "kl"),
            "kl_safe_answered": _mean_with_ci(ctx, kl[answered], "kl_answered"),
            "rates": (ctx.condition_rows([base[x.id] for x in toxic + hard + safe], "baseline")
                      + ctx.condition_rows(ablated, "ablation") + ctx.condition_rows(added, "actadd"))}


def _mean_with_ci(ctx, values: np.ndarray, cell: str) -> dict:
    """{mean, ci_low, ci_high, n} of ``values`` (None for none)."""
    if not len(values):
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = ctx.mean_ci(values, "direction", cell)
    return {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "n": len(values)}


def selection_plot(selection: dict, n_pos: int, s: DirectionSettings, path: Path) -> Path:
    """The layer scan: every scored candidate's ablation score, induced score and KL by layer and position."""
    keys = {"refusal score, toxic, ablated": "ablation_score", "refusal score, safe, actadd": "induce_score",
            "KL on safe prompts, ablated": "kl_safe"}
    panels = {name: {} for name in keys}
    for row in selection["candidates"]:
        for name, key in keys.items():
            panels[name].setdefault(row["layer"], [float("nan")] * n_pos)[row["position"] + n_pos] = row[key]
    sel = selection["selected"]
    return layer_scan_plot(panels, path, (sel["layer"], sel["position"] + n_pos), ("KL on safe prompts, ablated",),
                           {"refusal score, toxic, ablated": selection["baseline"]["toxic_score"],
                            "refusal score, safe, actadd": s.induce_min_score, "KL on safe prompts, ablated": s.max_kl})
