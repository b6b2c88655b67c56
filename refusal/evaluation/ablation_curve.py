"""Ablation curves: how much refusal do the components that patching ranks highest carry, against random components?

1. Rank the attention heads and MLP layers (``components``) by their pooled (``all``) patching effect in the
   ``rank_by`` direction (refusal/evaluation/patching.py), largest first (NaN last; ties in model order).
2. For each k of ``ks`` (``auto``: 0, 1, 2, 4, … and the number of components), ablate the top k at once at the
   patched positions (the last ``n_positions`` prompt tokens): ``mean`` sets each to its mean over at most
   ``n_mean_prompts`` safe prompts of ``mean_split`` (per aligned position), ``zero`` to 0. Measure the mean refusal
   score of the held-out toxic prompts (the evaluation split; at most ``n_per_category`` per category), per
   category and pooled, and the residual fraction (s_k − s_safe)/(s_0 − s_safe) (s_safe: the held-out safe
   prompts' unablated mean score, at most ``n_per_category`` of them).
3. Controls: ``n_random`` random sets of k components, set j drawn with numpy's generator seeded (seed, k, j).
4. Optionally (``generate_ks``, empty by default) the judged refusal rate of the held-out toxic prompts with the top
   k ablated (the project's generate + judge), for those k.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import MISSING  # noqa: E402

from refusal.config import choice, integer  # noqa: E402
from refusal.data.records import SPLITS  # noqa: E402
from refusal.errors import ConfigError  # noqa: E402
from refusal.evaluation.patch_sites import Site, capture, edit_sites, head_dim, site_scores  # noqa: E402
from refusal.evaluation.patching import DIRECTIONS, _choices, config_keys, subset  # noqa: E402
from refusal.utils.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)
ABLATIONS = ("mean", "zero")
RANKED = {"heads": "head", "mlp": "mlp"}


def _ks(key: str, value):
    if value == "auto":
        return value
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}={value!r} is not valid; use auto or a non-empty list of ints >= 0")
    return tuple(sorted({integer(f"{key} entry", k, 0) for k in value}))


@dataclass(frozen=True)
class AblationCurveSettings:
    """``evaluation.ablation_curve``."""
    rank_by: str = "noising"  # the patching direction whose pooled effect ranks the components
    components: tuple = ("heads", "mlp")
    ablation: str = "mean"  # mean | zero
    mean_split: str = "train"
    n_mean_prompts: int = 32
    n_per_category: int = 16
    ks: object = "auto"  # auto | list of ints
    n_random: int = 5
    generate_ks: tuple = ()

    @classmethod
    def from_config(cls, node, key: str = "evaluation.ablation_curve") -> "AblationCurveSettings":
        d = config_keys(node, key, [f.name for f in fields(cls)])
        gen = d["generate_ks"]
        if isinstance(gen, str) or not isinstance(gen, (list, tuple)):
            raise ConfigError(f"{key}.generate_ks={gen!r} is not valid; use a list of ints >= 0 (empty: no generation)")
        return cls(choice(f"{key}.rank_by", d["rank_by"], DIRECTIONS), _choices(f"{key}.components", d["components"],
                                                                               RANKED),
                   choice(f"{key}.ablation", d["ablation"], ABLATIONS),
                   choice(f"{key}.mean_split", d["mean_split"], SPLITS),
                   integer(f"{key}.n_mean_prompts", d["n_mean_prompts"], 1),
                   integer(f"{key}.n_per_category", d["n_per_category"], 1), _ks(f"{key}.ks", d["ks"]),
                   integer(f"{key}.n_random", d["n_random"], 0),
                   tuple(integer(f"{key}.generate_ks entry", k, 0) for k in gen))


@dataclass
class AblationCurveSchema:
    """The Hydra schema of ``evaluation.ablation_curve`` (values in conf/evaluation/*.yaml)."""
    rank_by: str = MISSING
    components: List[str] = MISSING
    ablation: str = MISSING
    mean_split: str = MISSING
    n_mean_prompts: int = MISSING
    n_per_category: int = MISSING
    ks: Any = MISSING  # auto | list of ints
    n_random: int = MISSING
    generate_ks: List[int] = MISSING


def rank_components(patching: dict, s: AblationCurveSettings) -> list[tuple[Site, float]]:
    """(site, pooled effect) of every ranked component, largest effect first (NaN last, ties in model order)."""
    effects = (patching.get("effects") or {}).get(s.rank_by)
    key = "evaluation.ablation_curve"
    if effects is None:
        raise ConfigError(f"{key}.rank_by={s.rank_by!r} needs the patching stage to run {s.rank_by} (its directions "
                          f"are {patching.get('directions')})")
    out = []
    for comp in s.components:
        kind = RANKED[comp]
        if kind not in effects:
            raise ConfigError(f"{key}.components entry {comp!r} was not patched; add it to evaluation.patching"
                              f".components (patched: {patching.get('components')})")
        for li, row in enumerate(effects[kind]["all"]):
            for i, v in enumerate(row if kind == "head" else [row]):
                out.append((Site(kind, patching["layers"][li], i), float("nan") if v is None else float(v)))
    return sorted(out, key=lambda x: (np.isnan(x[1]), -np.nan_to_num(x[1]), x[0]))


def k_grid(ks, n: int) -> list[int]:
    if ks == "auto":
        grid = {0, n} | {2 ** i for i in range(max(n, 1).bit_length()) if 2 ** i < n}
        return sorted(grid)
    bad = [k for k in ks if k > n]
    if bad:
        raise ConfigError(f"evaluation.ablation_curve.ks entries {bad} exceed the {n} ranked components; use ks <= {n}")
    return list(ks)


def _held_out(ctx, s: AblationCurveSettings) -> tuple[list, list]:
    toxic = [r for c in sorted(ctx.prompts.categories(label="toxic"))
             for r in subset(list(ctx.prompts.filter(label="toxic", category=c)), s.n_per_category, ctx.seed,
                             f"abl:{c}")]
    if not toxic:
        raise ConfigError("the evaluation split has no toxic prompts to ablate refusal on")
    return toxic, subset(list(ctx.prompts.filter(label="safe")), s.n_per_category, ctx.seed, "abl:safe")


class Ablator:
    """Scores of the held-out toxic prompts (mean per group) with a set of sites ablated."""

    def __init__(self, ctx, prompts, s: AblationCurveSettings, patching: dict, toxic: list):
        self.ctx, self.s = ctx, s
        self.n_pos, self.hook, layers = patching["n_positions"], patching["resid_hook"], patching["layers"]
        self.dh, self.width = head_dim(ctx.model), int(ctx.model.config.hidden_size)
        self.texts = [r.prompt for r in toxic]
        self.groups = {"all": list(range(len(toxic))), **{c: [i for i, r in enumerate(toxic) if r.category == c]
                                                         for c in sorted({r.category for r in toxic})}}
        self.means = None
        if s.ablation == "mean":
            pool = subset(list(prompts.filter(split=s.mean_split, label="safe")), s.n_mean_prompts, ctx.seed,
                          "abl:mean")
            if not pool:
                raise ConfigError(f"evaluation.ablation_curve.mean_split={s.mean_split!r} has no safe prompts for the "
                                  f"mean ablation; choose another split (one of {list(SPLITS)}) or ablation=zero")
            self.means = capture(ctx, [r.prompt for r in pool], layers, self.n_pos, self.hook)[0].mean()

    def value(self, site: Site) -> torch.Tensor:
        if self.means is not None:
            return self.means.value(site, slice(0, 1), self.dh)
        return torch.zeros(1, 1 if site.kind == "resid" else self.n_pos, self.dh if site.kind == "head" else self.width)

    def edits(self, sites) -> list:
        return [(site, self.value(site)) for site in sites]

    def scores(self, sites) -> dict[str, float]:
        per = site_scores(self.ctx, self.texts, lambda rows: self.edits(sites), self.n_pos, self.hook)
        return {g: float(per[idx].mean()) for g, idx in self.groups.items()}


def _random_scores(ab: Ablator, ranked: list, ks: list[int], top: list[dict], n_random: int, seed: int) -> dict:
    """{group: {mean, min, max: [per k]}} over ``n_random`` random sets of each size (set j of size k drawn with
    the generator seeded (seed, k, j)); k = 0 and k = all are the top curve's values."""
    rand = []
    for i, k in enumerate(ks):
        if k in (0, len(ranked)):
            rand.append([top[i]] * n_random)
            continue
        sets = [np.random.default_rng([seed, k, j]).choice(len(ranked), k, replace=False) for j in range(n_random)]
        rand.append([ab.scores([ranked[m][0] for m in sorted(idx)]) for idx in sets])
    return {g: {stat: [float(fn([r[g] for r in rs])) if rs else None for rs in rand]
                for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))} for g in ab.groups}


def _generated(ctx, ab: Ablator, ranked: list, toxic: list, generate_ks) -> list[dict]:
    rows = []
    for k in generate_ks:
        if k > len(ranked):
            raise ConfigError(f"evaluation.ablation_curve.generate_ks entry {k} exceeds the {len(ranked)} components; "
                              f"use entries <= {len(ranked)}")
        with edit_sites(ctx.model, ab.edits([site for site, _ in ranked[:k]]), ab.n_pos, ab.hook):
            items = ctx.generate(toxic, name=f"ablation_curve_top{k}")
        rows += ctx.condition_rows(items, f"top{k}")
    return rows


def run_ablation_curve(ctx, prompts, s: AblationCurveSettings, run_dir: Path, patching_result: dict) -> dict:
    """The curves of the module doc; a JSON-able dict and the figure ``ablation_curve.png`` in ``run_dir``."""
    start = time.perf_counter()
    ranked = rank_components(patching_result, s)
    ks = k_grid(s.ks, len(ranked))
    toxic, safe = _held_out(ctx, s)
    ab = Ablator(ctx, prompts, s, patching_result, toxic)
    safe_score = (float(site_scores(ctx, [r.prompt for r in safe], lambda rows: [], ab.n_pos, ab.hook).mean())
                  if safe else None)
    top = [ab.scores([site for site, _ in ranked[:k]]) for k in ks]
    log.info("ablation curve: %d ks x (1 + %d random) on %d toxic prompts", len(ks), s.n_random, len(toxic))
    curve = {g: [t[g] for t in top] for g in ab.groups}
    result = {"rank_by": s.rank_by, "ablation": s.ablation, "components": list(s.components), "ks": ks,
              "n_components": len(ranked), "n_positions": ab.n_pos, "n_random": s.n_random,
              "ranking": [{"component": site.label, "kind": site.kind, "layer": site.layer, "index": site.index,
                           "effect": eff} for site, eff in ranked],
              "n_prompts": {g: len(idx) for g, idx in ab.groups.items()}, "safe_score": safe_score, "curve": curve,
              "residual_fraction": {g: [None if safe_score is None or abs(c[0] - safe_score) < 1e-9 else
                                        (x - safe_score) / (c[0] - safe_score) for x in c] for g, c in curve.items()},
              "random": _random_scores(ab, ranked, ks, top, s.n_random, ctx.seed),
              "generated": _generated(ctx, ab, ranked, toxic, s.generate_ks)}
    result["plot"] = str(curve_plot(result, Path(run_dir) / "ablation_curve.png"))
    result["seconds"] = time.perf_counter() - start
    return result


def curve_plot(result: dict, path: Path) -> Path:
    """Mean refusal score against k: the top-k curve pooled (bold) and per category, the random sets' range
    (band) and mean (dashed), the safe prompts' score (grey)."""
    ks, x = result["ks"], np.arange(len(result["ks"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        rnd = result["random"]["all"]
        nan = [np.nan if v is None else v for v in rnd["min"]], [np.nan if v is None else v for v in rnd["max"]]
        if result["n_random"]:
            ax.fill_between(x, *nan, color="tab:gray", alpha=0.25, label=f"random sets ({result['n_random']}), range")
            ax.plot(x, rnd["mean"], color="tab:gray", ls="--", lw=1, label="random sets, mean")
        for g, ys in result["curve"].items():
            if g != "all":
                ax.plot(x, ys, lw=0.8, alpha=0.7, label=g)
        ax.plot(x, result["curve"]["all"], color="black", lw=2, marker="o", label="top k, all toxic")
        if result["safe_score"] is not None:
            ax.axhline(result["safe_score"], color="tab:green", ls=":", lw=1, label="safe prompts, unablated")
        ax.set_xticks(x, [str(k) for k in ks])
        ax.set_xlabel(f"k components {result['ablation']}-ablated (ranked by {result['rank_by']} patching)")
        ax.set_ylabel("mean refusal score (held-out toxic)")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return Path(path)
