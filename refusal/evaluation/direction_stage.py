"""The refusal-direction stage (the method: refusal/evaluation/direction.py): candidates by the configured estimator,
the selection, an optional estimator comparison, the held-out measurements, an optional abliterated export, and
direction.safetensors with its plots."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from refusal.circuit.plots import heatmap
from refusal.errors import ConfigError
from refusal.evaluation.abliterate import export_and_measure
from refusal.evaluation.direction import (DirectionSettings, cosines, held_out_measures, candidate_samples, selection_prompts,
                                          dims_by_layer, scored_layers, select_direction, selection_plot)
from refusal.evaluation.direction_methods import compare_methods, method_candidates, refine_selected
from refusal.utils.io import atomic_path

log = logging.getLogger(__name__)


def run_direction(ctx, train_prompts, s: DirectionSettings, out_dir: Path, eval_split: str) -> dict:
    """The whole method on ``train_prompts`` (the full prompt set: the candidate and selection splits are read
    from it) and ``ctx.prompts`` (the evaluation split)."""
    for name in ("candidate_split", "selection_split"):
        if getattr(s, name) == eval_split:
            raise ConfigError(f"evaluation.direction.{name}={getattr(s, name)!r} is the evaluation split; choose a "
                              "held-out one (train or val)")
    n_pos, out_dir = ctx.formatter.n_post_instruction, Path(out_dir)
    layers = scored_layers(s, ctx.loaded.n_layers)
    samples, cat_diffs, outliers = candidate_samples(ctx, train_prompts, s, layers)
    stacked = method_candidates(ctx, s, samples)
    candidates = {layer: stacked[i] for i, layer in enumerate(layers)}
    tox_s, safe_s = selection_prompts(ctx, train_prompts, s)
    log.info("direction: scoring %d candidates on %d toxic and %d safe %s prompts", len(layers) * n_pos,
             len(tox_s), len(safe_s), s.selection_split)
    selection = select_direction(ctx, candidates, tox_s, safe_s, s)
    best = selection["selected"]
    layer, pos = best["layer"], best["position"] + n_pos
    r = candidates[layer][pos].float()
    if s.method == "rdo":
        selection, r = refine_selected(ctx, selection, candidates, samples, tox_s, safe_s, s)
        r, best = r.float(), selection["selected"]
    at = best if s.compare_at == "selected" else min(selection["candidates"], key=lambda c: c["ablation_score"])
    same_place = (at["layer"], at["position"]) == (best["layer"], best["position"])
    reference = (r, "the selected direction") if same_place else \
        (candidates[at["layer"]][at["position"] + n_pos].float(), f"the {s.method} candidate there")
    methods, method_vectors = (compare_methods(ctx, s, samples, at["layer"], at["position"], reference, tox_s, safe_s,
                                               out_dir) if s.compare_methods else (None, None))
    log.info("direction: selected layer %d position %d; generating under ablation and actadd", layer,
             best["position"])
    held_out = held_out_measures(ctx, r, layer, s)
    export = None
    if s.export:
        export, rows = export_and_measure(ctx, r, best, s, out_dir)
        held_out["rates"] += rows
    per_cat = {c: d[layers.index(layer), pos] for c, d in cat_diffs.items()}
    return {
        "method": s.method, "selected": best, "filters_passed": selection["filters_passed"],
        "fallback": selection["fallback"], "outlier_dims": dims_by_layer(outliers, layers),
        "selection": selection, "n_candidates": len(selection["candidates"]), "settings": asdict(s), **held_out,
        "methods": methods, "export": export,
        **_write_outputs(out_dir, r, stacked, layers, outliers, per_cat, selection, n_pos, s, method_vectors),
    }


def _write_outputs(out_dir: Path, r: Tensor, stacked: Tensor, layers: list[int], outliers: Tensor,
                   per_cat: dict[str, Tensor], selection: dict, n_pos: int, s: DirectionSettings,
                   method_vectors: Tensor | None) -> dict:
    """direction.safetensors (with ``compare_methods``, their directions as ``methods``, in that order), the
    per-category cosine heatmap and the layer scan; the per-category block and the plots' paths."""
    best, cats = selection["selected"], list(per_cat)
    diffs = torch.stack([per_cat[c] for c in cats])
    cos = cosines(diffs)
    with_global = cosines(torch.cat([r.double()[None], diffs]))[0, 1:]
    tensors = {"direction": r.contiguous(), "candidates": stacked.float().contiguous(),
               "candidate_layers": torch.tensor(layers, dtype=torch.int64), "outlier_dims": outliers.contiguous(),
               "per_category": diffs.float().contiguous()}
    if method_vectors is not None:
        tensors["methods"] = method_vectors.contiguous()
    with atomic_path(out_dir / "direction.safetensors") as tmp:
        save_file(tensors, str(tmp))
    plot = str(heatmap(cos, cats, f"cosine of per-category refusal directions (layer {best['layer']}, pos "
                       f"{best['position']})", out_dir / "direction_cosine.png", vmin=-1.0))
    layer_plot = str(selection_plot(selection, n_pos, s, out_dir / "direction_layers.png"))
    return {"per_category": {"categories": cats, "cosine": cos.tolist(), "cosine_with_selected": with_global.tolist()},
            "plot": plot, "layer_plot": layer_plot}
