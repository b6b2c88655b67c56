"""Compare the toxic category circuits, test them, and decide: the content of ``discovery_summary.json``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refusal.circuit.circuit import Circuit, rnd
from refusal.circuit.compare import SIMILARITIES, mean_offdiag, shared_core, similarities
from refusal.circuit.discovery import PromptGroup, circuit_from_rows
from refusal.circuit.nodes import NodeSpace
from refusal.circuit.plots import heatmap
from refusal.circuit.select import Selection
from refusal.circuit.stats import bootstrap, global_test, pairwise_tests
from refusal.circuit.verdict import DecisionRule
from refusal.config import integer, number
from refusal.errors import ConfigError


@dataclass(frozen=True)
class StatsSettings:
    """``circuit.statistics``: label permutations, prompt resamples for the CIs, and the CI level."""
    n_permutations: int
    n_resamples: int
    ci_level: float

    def __post_init__(self):
        integer("circuit.statistics.n_permutations", self.n_permutations, 1)
        integer("circuit.statistics.n_resamples", self.n_resamples, 0)
        number("circuit.statistics.ci_level", self.ci_level, 0, 1, open_lo=True, open_hi=True)


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[rnd(float(v)) for v in row] for row in np.asarray(m, dtype=float)]


def _mean_core_mass(core_mass: np.ndarray) -> float:
    """Mean core mass over the categories with a non-empty circuit (NaN when there is none)."""
    return float(np.nanmean(core_mass)) if not np.all(np.isnan(core_mass)) else float("nan")


def _mean_error_mass(circuits: dict[str, Circuit], space: NodeSpace) -> float:
    errors = [e for e in (c.error_mass_fraction(space) for c in circuits.values()) if e is not None]
    return float(np.mean(errors)) if errors else float("nan")


def _bootstrap_ci(group: PromptGroup, rows: list[np.ndarray], space: NodeSpace, selection: Selection,
                  stats: StatsSettings, seed: int) -> dict:
    """Percentile CIs of the similarity matrices and the mean core mass, each category circuit rediscovered from
    its prompts resampled."""
    if not stats.n_resamples:
        return {}
    a, feat = group.attributions, ~space.is_error

    def summarise(sample: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = [circuit_from_rows(a.ie[s], a.m_clean[s], a.m_patch[s], space, selection) for s in sample]
        b_ie = torch.stack([o[0][feat] for o in out])
        b_masks = torch.stack([o[1][feat] for o in out])
        s = similarities(b_ie, b_masks)
        return {**{k: s[k] for k in SIMILARITIES},
                "mean_core_mass": np.array(_mean_core_mass(shared_core(b_ie, b_masks)["core_mass"]))}
    return bootstrap(rows, summarise, stats.n_resamples, stats.ci_level, seed)


def _heatmaps(sims: dict, pairs: list[dict], cats: list[str], heatmap_dir: Path) -> dict[str, str]:
    pmat = np.full((len(cats), len(cats)), np.nan)
    for p in pairs:
        i, j = cats.index(p["a"]), cats.index(p["b"])
        pmat[i, j] = pmat[j, i] = p["p_adjusted"]
    heatmap_dir = Path(heatmap_dir)
    maps = {k: str(heatmap(sims[k], cats, f"{k} (top-{sims['n_equalised']} features)", heatmap_dir / f"{k}.png",
                           vmin=-1.0 if k == "cosine" else 0.0))
            for k in SIMILARITIES}
    maps["pairwise_p_adjusted"] = str(heatmap(pmat, cats, "pairwise permutation p (BH)",
                                              heatmap_dir / "pairwise_p_adjusted.png", cmap="magma"))
    return maps


def _similarity_json(sims: dict, ci: dict, ci_level: float) -> dict:
    return {"n_equalised": sims["n_equalised"], **{k: _matrix(sims[k]) for k in SIMILARITIES},
            "mean_offdiagonal": {k: rnd(mean_offdiag(sims[k])) for k in SIMILARITIES},
            "ci": {k: {"level": ci_level, "low": _matrix(v["low"]), "high": _matrix(v["high"])}
                   for k, v in ci.items() if k in SIMILARITIES}}


def _core_json(core: dict, cats: list[str], space: NodeSpace, ci: dict, ci_level: float) -> dict:
    feat_idx = torch.nonzero(~space.is_error).flatten()
    mean_ci = ci.get("mean_core_mass")
    nodes = [space.node_id(i) for i in feat_idx[core["core"]].tolist()]
    return {"n_nodes": len(nodes), "nodes": nodes,
            "core_mass": {c: rnd(float(v)) for c, v in zip(cats, core["core_mass"])},
            "mean_core_mass": rnd(_mean_core_mass(core["core_mass"])),
            "mean_core_mass_ci": ({"level": ci_level, "low": rnd(float(mean_ci["low"])),
                                   "high": rnd(float(mean_ci["high"]))} if ci else None)}


def analyse(group: PromptGroup, circuits: dict[str, Circuit], space: NodeSpace, selection: Selection,
            stats: StatsSettings, rule: DecisionRule, seed: int, heatmap_dir: Path) -> dict:
    cats = sorted(circuits)
    if len(cats) < 2:
        raise ConfigError(f"comparison needs at least 2 toxic categories with enough prompts; have {cats}")
    feat = ~space.is_error
    ie = torch.stack([circuits[c].ie[feat] for c in cats])
    masks = torch.stack([circuits[c].selected[feat] for c in cats])
    sims = similarities(ie, masks)
    core = shared_core(ie, masks)

    rows = [np.array(group.rows(c)) for c in cats]
    labels = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    X = group.attributions.ie[np.concatenate(rows)][:, feat]
    glob = global_test(X, labels, stats.n_permutations, seed)
    pairs = pairwise_tests(X, labels, cats, stats.n_permutations, seed + 1, rule.alpha)
    ci = _bootstrap_ci(group, rows, space, selection, stats, seed + 2)
    decision = rule.decide(glob["p_value"], [p["differs"] for p in pairs], _mean_core_mass(core["core_mass"]),
                           _mean_error_mass({c: circuits[c] for c in cats}, space))
    feat_idx = torch.nonzero(feat).flatten()
    return {
        "recognition": decision.pop("verdict"),  # descriptive evidence, never the run's verdict (refusal.verdict.final)
        **decision,
        "categories": cats,
        "global_test": {**glob, "statistic_name": "1 - mean pairwise cosine of category mean-IE vectors (features)",
                        "n_permutations": stats.n_permutations},
        "pairwise_tests": [{k: (rnd(v) if isinstance(v, float) else v) for k, v in p.items()} for p in pairs],
        "similarity": _similarity_json(sims, ci, stats.ci_level),
        "shared_core": _core_json(core, cats, space, ci, stats.ci_level),
        "specific_nodes": {c: [space.node_id(i) for i in feat_idx[core["specific"][k]].tolist()]
                           for k, c in enumerate(cats)},
        "n_resamples": stats.n_resamples,
        "heatmaps": _heatmaps(sims, pairs, cats, heatmap_dir),
    }
