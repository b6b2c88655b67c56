"""Activation patching sweeps (Meng et al. 2022; Heimersheim & Nanda 2024; Arditi et al. 2024 §3): where in the model
does the toxic-vs-safe difference that decides refusal live?

Prompts: of the ``split``, at most ``n_per_category`` toxic prompts per category and ``n_safe`` safe ones (seeded).
Toxic prompt i is paired with safe prompt π(i) = i mod n_safe. Components (refusal/evaluation/patch_sites.py), at the
last ``positions`` prompt tokens (the post-instruction tokens, aligned from the end): the residual stream per layer ×
position, each attention head's output per layer × head, the MLP output per layer. Metric m: the refusal score
(log-odds of the refusal tokens at the first response position, refusal/behavior/score.py).

- ``denoising``: run safe prompt π(i), patch in the clean activation (``paired``: toxic prompt i's; ``mean``: the
  mean over the toxic prompts of i's category). Does the component restore refusal?
  effect = (m̄_patched − m̄_corrupt) / (m̄_clean − m̄_corrupt): 0 no recovery, 1 full.
- ``noising``: run toxic prompt i, patch in the corrupt activation (``paired``: safe prompt π(i)'s; ``mean``: the mean
  over the safe prompts). Does the component remove refusal?
  effect = (m̄_clean − m̄_patched) / (m̄_clean − m̄_corrupt): 0 refusal untouched, 1 brought to the safe level.

m̄ are means over a group's toxic prompts (each category, and ``all`` pooled): m̄_clean of their unpatched scores,
m̄_corrupt of the safe prompts' (denoising: the π(i) run; noising: the π(i) paired, or every safe prompt for
``mean``).
Means are normalised, not per-prompt ratios (no division by a small per-prompt gap); a group whose gap
|m̄_clean − m̄_corrupt| < 1e-9 gets NaN (null).
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

from refusal.circuit.plots import bar_panels, matrix_plot
from refusal.config import choice, integer, plain
from refusal.data.records import SPLITS
from refusal.errors import ConfigError
from refusal.evaluation.patch_sites import Acts, all_sites, capture, head_dim, n_heads, site_scores
from refusal.model.hooks import layer_spec, parse_layers
from refusal.utils.progress import progress

log = logging.getLogger(__name__)
DIRECTIONS = ("denoising", "noising")
CORRUPTIONS = ("paired", "mean")
COMPONENTS = {"resid": "resid", "heads": "head", "mlp": "mlp"}  # config name -> site kind
RESID_HOOKS = ("hook_resid_pre", "hook_resid_post")


def config_keys(node, key: str, names: list[str]) -> dict:
    """``node`` as a plain dict, every one of ``names`` present and no other key."""
    d = plain(node)
    if not isinstance(d, dict):
        raise ConfigError(f"{key}={d!r} is not valid; use a mapping with keys {names}")
    for k in d:
        if k not in names:
            raise ConfigError(f"{key}.{k} is not a valid key; choose from {names}")
    for k in names:
        if k not in d:
            raise ConfigError(f"{key}.{k} is missing; set it (keys: {names})")
    return d


def _choices(key: str, values, valid) -> tuple:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{key}={values!r} is not valid; use a non-empty list of {list(valid)}")
    return tuple(choice(f"{key} entry", v, valid) for v in values)


@dataclass(frozen=True)
class PatchingSettings:
    """``evaluation.patching``."""
    split: str = "train"  # the prompts patched
    n_per_category: int = 4  # toxic prompts per category (seeded subset)
    n_safe: int = 16  # safe prompts (seeded subset)
    corruption: str = "paired"  # paired | mean
    directions: tuple = DIRECTIONS
    components: tuple = ("resid", "heads", "mlp")
    resid_hook: str = "hook_resid_pre"  # or hook_resid_post
    layers: object = "all"  # layer spec
    positions: object = "post_instruction"  # or an int: the last n prompt tokens

    @classmethod
    def from_config(cls, node, key: str = "evaluation.patching") -> "PatchingSettings":
        d = config_keys(node, key, [f.name for f in fields(cls)])
        pos = d["positions"] if d["positions"] == "post_instruction" else integer(f"{key}.positions", d["positions"], 1)
        return cls(choice(f"{key}.split", d["split"], SPLITS), integer(f"{key}.n_per_category", d["n_per_category"], 1),
                   integer(f"{key}.n_safe", d["n_safe"], 1), choice(f"{key}.corruption", d["corruption"], CORRUPTIONS),
                   _choices(f"{key}.directions", d["directions"], DIRECTIONS),
                   _choices(f"{key}.components", d["components"], COMPONENTS),
                   choice(f"{key}.resid_hook", d["resid_hook"], RESID_HOOKS), layer_spec(f"{key}.layers", d["layers"]),
                   pos)


@dataclass
class PatchingSchema:
    """The Hydra schema of ``evaluation.patching`` (values in conf/evaluation/*.yaml)."""
    split: str = MISSING
    n_per_category: int = MISSING
    n_safe: int = MISSING
    corruption: str = MISSING
    directions: List[str] = MISSING
    components: List[str] = MISSING
    resid_hook: str = MISSING
    layers: Any = MISSING  # layer spec
    positions: Any = MISSING  # post_instruction | int


def normalised(m_patched: float, m_clean: float, m_corrupt: float, direction: str) -> float:
    """The module doc's effect; NaN when |m_clean − m_corrupt| < 1e-9."""
    gap = m_clean - m_corrupt
    if abs(gap) < 1e-9:
        return float("nan")
    return (m_patched - m_corrupt) / gap if direction == "denoising" else (m_clean - m_patched) / gap


def subset(records: list, n: int, seed: int, tag: str) -> list:
    """At most ``n`` of ``records``, seeded by (seed, tag), in their order."""
    if len(records) <= n:
        return list(records)
    rng = np.random.default_rng([seed, sum(ord(c) * 31 ** i for i, c in enumerate(tag)) % 2**32])
    return [records[i] for i in np.sort(rng.choice(len(records), n, replace=False))]


def prompt_subsets(prompts, split: str, n_per_category: int, n_safe: int, seed: int, key: str) -> tuple[list, list]:
    """(toxic records of ``split``, category by category, at most n_per_category each; its safe records, at most
    n_safe), seeded; ``key`` names the config group in the error when the split lacks either."""
    sel = prompts.filter(split=split)
    toxic = [r for c in sorted(sel.categories(label="toxic"))
             for r in subset(list(sel.filter(label="toxic", category=c)), n_per_category, seed, f"patch:{c}")]
    safe = subset(list(sel.filter(label="safe")), n_safe, seed, "patch:safe")
    if not toxic or not safe:
        raise ConfigError(f"{key}.split={split!r} has no {'toxic' if not toxic else 'safe'} prompts; "
                          f"choose a split with both (one of {list(SPLITS)})")
    return toxic, safe


def patching_prompts(prompts, s: PatchingSettings, seed: int) -> tuple[list, list]:
    """The patching stage's prompts (:func:`prompt_subsets`)."""
    return prompt_subsets(prompts, s.split, s.n_per_category, s.n_safe, seed, "evaluation.patching")


def _category_means(acts: Acts, cats: list[str]) -> Acts:
    """Row i: the mean of ``acts`` over the rows of i's category."""
    means = {c: acts.select([j for j, x in enumerate(cats) if x == c]).mean() for c in dict.fromkeys(cats)}
    rows = [means[c] for c in cats]
    return Acts(acts.layers, *(torch.cat([getattr(m, k) for m in rows]) for k in ("resid", "z", "mlp")))


def sweep(ctx, toxic: list[str], cats: list[str], safe: list[str], s: PatchingSettings, layers: list[int],
          n_pos: int) -> dict:
    """{"baseline": {direction: {group: {m_clean, m_corrupt, n}}}, "effects": {direction: {kind: {group: array}}}}."""
    tox_acts, tox_scores = capture(ctx, toxic, layers, n_pos, s.resid_hook)
    safe_acts, safe_scores = capture(ctx, safe, layers, n_pos, s.resid_hook)
    pair = [i % len(safe) for i in range(len(toxic))]
    groups = {"all": list(range(len(toxic))),
              **{c: [i for i, x in enumerate(cats) if x == c] for c in sorted(set(cats))}}
    heads, dh = n_heads(ctx.model), head_dim(ctx.model)
    kinds = [COMPONENTS[c] for c in s.components]
    sites = all_sites(kinds, layers, n_pos, heads)
    base, effects = {}, {}
    for direction in s.directions:
        if direction == "denoising":
            run = [safe[j] for j in pair]
            source = tox_acts if s.corruption == "paired" else _category_means(tox_acts, cats)
        else:
            run = toxic
            source = safe_acts.select(pair) if s.corruption == "paired" else safe_acts.mean()
        one = source.resid.shape[0] == 1
        run_scores = site_scores(ctx, run, lambda rows: [], n_pos, s.resid_hook)
        if direction == "denoising":
            clean, corrupt = tox_scores, run_scores
        else:
            clean = run_scores
            corrupt = safe_scores[pair] if s.corruption == "paired" else safe_scores
        base[direction] = {g: {"m_clean": float(clean[idx].mean()), "n": len(idx), "m_corrupt": float(
            (corrupt if direction == "noising" and s.corruption == "mean" else corrupt[idx]).mean())}
            for g, idx in groups.items()}
        t0 = time.perf_counter()
        eff = {k: {g: np.full((len(layers), {"resid": n_pos, "head": heads, "mlp": 1}[k]), np.nan) for g in groups}
               for k in kinds}
        with progress(len(sites), f"patching ({direction})", unit="site") as bar:
            for site in sites:
                patched = site_scores(ctx, run, lambda rows, site=site: [
                    (site, source.value(site, slice(0, 1) if one else rows, dh))], n_pos, s.resid_hook)
                for g, idx in groups.items():
                    b = base[direction][g]
                    eff[site.kind][g][layers.index(site.layer), site.index] = normalised(
                        float(patched[idx].mean()), b["m_clean"], b["m_corrupt"], direction)
                bar.update(1)
        log.info("patching: %s, %d sites x %d prompts in %.1fs", direction, len(sites), len(run),
                 time.perf_counter() - t0)
        effects[direction] = {k: {g: (a[:, 0] if k == "mlp" else a).tolist() for g, a in e.items()}
                              for k, e in eff.items()}
    return {"baseline": base, "effects": effects}


def position_tokens(formatter, n_pos: int) -> list[str]:
    ids = formatter.encode(["x"]).input_ids[0, -n_pos:].tolist()
    return [f"{p - n_pos}:{t}" for p, t in enumerate(formatter.tokenizer.convert_ids_to_tokens(ids))]


def patching_plots(result: dict, run_dir: Path) -> dict[str, str]:
    """The pooled (``all``) effects: a layer × position heatmap and a layer × head heatmap per direction, one MLP bar
    panel per direction; {name: PNG path}."""
    out, bars = {}, {}
    rows = [f"L{layer}" for layer in result["layers"]]
    for direction, eff in result["effects"].items():
        if "resid" in eff:
            out[f"resid_{direction}"] = str(matrix_plot(
                np.array(eff["resid"]["all"]), rows, result["position_tokens"], f"residual stream ({direction})",
                run_dir / f"patching_resid_{direction}.png", xlabel="position", ylabel="layer"))
        if "head" in eff:
            out[f"heads_{direction}"] = str(matrix_plot(
                np.array(eff["head"]["all"]), rows, [f"H{h}" for h in range(result["n_heads"])],
                f"attention heads ({direction})", run_dir / f"patching_heads_{direction}.png", xlabel="head",
                ylabel="layer"))
        if "mlp" in eff:
            bars[f"MLP output ({direction})"] = dict(zip(rows, eff["mlp"]["all"]))
    if bars:
        out["mlp"] = str(bar_panels(bars, run_dir / "patching_mlp.png", {name: 0.0 for name in bars}))
    return out


def run_patching(ctx, prompts, s: PatchingSettings, run_dir: Path) -> dict:
    """The sweeps of the module doc on ``prompts`` (a PromptSet; its ``s.split``), with the figures written into
    ``run_dir``; a JSON-able dict (effects as nested lists: resid [layer][position], head [layer][head],
    mlp [layer])."""
    start = time.perf_counter()
    layers = parse_layers(s.layers, ctx.loaded.n_layers)
    n_pos = ctx.formatter.n_post_instruction if s.positions == "post_instruction" else int(s.positions)
    toxic, safe = patching_prompts(prompts, s, ctx.seed)
    log.info("patching: %d toxic and %d safe %s prompts, layers %s, last %d positions", len(toxic), len(safe),
             s.split, layers, n_pos)
    res = sweep(ctx, [r.prompt for r in toxic], [r.category for r in toxic], [r.prompt for r in safe], s, layers, n_pos)
    result = {"split": s.split, "corruption": s.corruption, "resid_hook": s.resid_hook,
              "components": list(s.components),
              "directions": list(s.directions), "layers": layers, "n_positions": n_pos, "n_heads": n_heads(ctx.model),
              "position_tokens": position_tokens(ctx.formatter, n_pos),
              "categories": sorted({r.category for r in toxic}),
              "n_toxic": len(toxic), "n_safe": len(safe), **res}
    result["plots"] = patching_plots(result, Path(run_dir))
    result["seconds"] = time.perf_counter() - start
    return result
