"""The shared bottleneck and the dissociation at each analysed layer (DESIGN §4; the verdict: refusal/verdict/).

For each hook of the discover run's node space, sets of k feature nodes at that hook only (error nodes never;
refusal/evaluation/bottleneck_sets.py): the *shared set*, the top k by the COMBINED circuit's |mean IE| (pooled
toxic-vs-safe attributions, no category labels); one *category set* per toxic category, the top k by that category's
|mean IE|; ``n_random`` random sets of k feature nodes of the hook (seeded). Measured on the held-out evaluation split
(``ctx.prompts``; hard prompts are not used), refusal score at the first response position (DESIGN §3):
    base [n]          every toxic prompt, no intervention        safe_base [m]  every safe prompt, no intervention
    shared [n]        the shared set ablated                     safe_kl [m]    KL(base || shared ablated) of the
    per_category [C, n]  row A: category A's set ablated                        next-token distribution, safe prompts
    random [R, n]     each random set ablated                    induced [m]    safe prompts with the shared set's
                                                                                features at their mean over the
                                                                                discovery split's toxic prompts
Ablation = the setup's ablation values (evaluation.ablation), at the node positions (refusal/evaluation/nodes.py).
Toxic categories with fewer than 2 held-out prompts, or without attributions and circuit, are dropped with a note;
every other one goes to layer_evidence, whose headroom CI decides which categories the model refuses (counted).
Decision: ``settings.rule`` (a refusal.verdict.LayerRule) per layer, refusal.verdict.model_verdict over the layers.

Size: k = ``size`` feature nodes per set (an int, or a fraction of the hook's feature nodes). The shared set is the
pooled top-k, so in a model with C separate mechanisms a k large enough to hold every category's features removes
every category's refusal; the category sets of the same size tell that union from a bottleneck (the rule:
refusal/verdict/rules.py). ``curve_sizes`` adds the shared set's residual refusal (and safe KL) at other k, descriptive only: the
decision is taken at ``size``. Random sets are drawn among all the hook's feature nodes (they may overlap the shared
set), as transfer's random circuits are. The induction values are the mean over every toxic prompt of the discovery
split (all categories, refused or not), computed like circuit_setup's ablation values.

The same sets as residual directions (refusal/evaluation/bottleneck_directions.py) give a second basis; the two
bases' model verdicts are combined by refusal/verdict/bases.py.

Output: {"layers": [{"hook", "layer", "k", "sets" (feature indices: shared, categories, random, and how many of each
set's nodes have |IE| > 0), "evidence" (layer_evidence), "decision" (LayerRule.decide), "curve", "notes"}],
"model" (model_verdict of the feature basis), "directions" ({"layers", "model", "notes"}), "combined" (across_bases),
"settings", "plots", "categories", "ie_source", "n_prompts", "notes"}. Bootstrap: the
evaluation's n_resamples and ci_level (percentile), seed = ctx.seed, the same resamples at every layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np
import torch
from omegaconf import MISSING

from refusal.behavior.score import refusal_score
from refusal.circuit.circuit import COMBINED
from refusal.config import integer, plain
from refusal.errors import ConfigError
from refusal.evaluation.bottleneck_directions import direction_profile
from refusal.evaluation.bottleneck_plots import bottleneck_plots
from refusal.evaluation.bottleneck_sets import hook_sets, n_features, ranking, set_size, size_value, top_k
from refusal.evaluation.nodes import NodeAblator
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer
from refusal.model.hooks import parse_hook_name
from refusal.verdict import LayerRule, layer_evidence, model_verdict
from refusal.verdict.profile import MODEL_RULE
from refusal.verdict.bases import across_bases

RULE_KEYS = ("bottleneck_max_residual", "no_bottleneck_min_residual", "max_kl", "min_induced", "dissociation_margin",
             "min_pair_fraction", "min_prompts")


@dataclass
class BottleneckRuleSchema:
    """``evaluation.bottleneck.rule``: the thresholds of refusal.verdict.LayerRule."""
    bottleneck_max_residual: float = MISSING
    no_bottleneck_min_residual: float = MISSING
    max_kl: float = MISSING
    min_induced: float = MISSING
    dissociation_margin: float = MISSING
    min_pair_fraction: float = MISSING
    min_prompts: int = MISSING


@dataclass
class BottleneckSchema:
    """The config schema of ``evaluation.bottleneck`` (values: conf/evaluation/*.yaml)."""
    size: Any = MISSING  # int >= 1 feature nodes per set, or a fraction in (0, 1) of the hook's feature nodes
    curve_sizes: List[Any] = MISSING  # other sizes for the shared set's descriptive curve
    n_random: int = MISSING
    rule: BottleneckRuleSchema = field(default_factory=BottleneckRuleSchema)


@dataclass(frozen=True)
class BottleneckSettings:
    """``evaluation.bottleneck`` (module docstring)."""
    size: int | float = 16
    curve_sizes: tuple = (4, 64)
    n_random: int = 5
    rule: LayerRule = field(default_factory=LayerRule)

    @classmethod
    def from_config(cls, node, key: str = "evaluation.bottleneck") -> "BottleneckSettings":
        curve = plain(node.curve_sizes)
        if not isinstance(curve, (list, tuple)):
            raise ConfigError(f"{key}.curve_sizes={curve!r} is not valid; use a list of sizes (may be empty)")
        rule = plain(node.rule)
        missing = [k for k in RULE_KEYS if not isinstance(rule, dict) or k not in rule]
        if missing or set(rule) - set(RULE_KEYS):
            raise ConfigError(f"{key}.rule={rule!r} is not valid; use a mapping with exactly the keys "
                              f"{list(RULE_KEYS)}")
        return cls(size_value(f"{key}.size", node.size), tuple(size_value(f"{key}.curve_sizes entry", v) for v in curve),
                   integer(f"{key}.n_random", node.n_random, 1), LayerRule(**{k: rule[k] for k in RULE_KEYS}))

    def describe(self) -> dict:
        return {"size": self.size, "curve_sizes": list(self.curve_sizes), "n_random": self.n_random,
                "rule": asdict(self.rule)}


@dataclass
class _Prompts:
    categories: list[str]  # toxic categories measured, sorted
    labels: np.ndarray  # [n] category index of each toxic prompt
    toxic: list[str]
    safe: list[str]
    notes: list[str]


def _prompts(ctx, ies: dict) -> _Prompts:
    toxic, notes, cats = ctx.prompts.filter(label="toxic"), [], []
    for c in toxic.categories():
        n = len(toxic.filter(category=c))
        if n < 2:
            notes.append(f"category {c} dropped: {n} held-out toxic prompt(s), a bootstrap needs >= 2")
        elif c not in ies:
            notes.append(f"category {c} dropped: the discover run has neither attributions nor a circuit of it")
        else:
            cats.append(c)
    records = [r for c in cats for r in toxic.filter(category=c)]
    labels = np.array([cats.index(r.category) for r in records], dtype=np.int64)
    safe = [r.prompt for r in ctx.prompts.filter(label="safe")]
    return _Prompts(cats, labels, [r.prompt for r in records], safe, notes)


class _Scorer:
    """Refusal scores (and safe next-token log-probabilities) of the fixed toxic and safe prompts."""

    def __init__(self, ctx, setup, p: _Prompts):
        self.ctx, self.model = ctx, ctx.model
        start = first_layer(setup.space.hooks, ctx.loaded.n_layers)
        tail = setup.space.n_positions  # every set is ablated, induced or clamped at the node positions only
        self.tox = PrefixCachedLogits(ctx.model, ctx.formatter, p.toxic, ctx.batch_size, start, tail)
        self.safe = PrefixCachedLogits(ctx.model, ctx.formatter, p.safe, ctx.batch_size, start, tail)
        self.base, base_safe = self.toxic(), self.safe()
        self.safe_base = self._score(base_safe)
        self.safe_logp = torch.log_softmax(base_safe.double(), -1)

    def _score(self, logits) -> np.ndarray:
        return refusal_score(logits, self.ctx.refusal_token_ids).numpy()

    def toxic(self, ablator: NodeAblator | None = None, mask=None) -> np.ndarray:
        if ablator is None:
            return self._score(self.tox())
        with ablator.ablated(self.model, mask):
            return self._score(self.tox())

    def safe_run(self, ablator: NodeAblator, mask) -> tuple[np.ndarray, np.ndarray]:
        """(scores [m], KL(base || run) [m]) of the safe prompts with ``mask`` set to ``ablator``'s values."""
        with ablator.ablated(self.model, mask):
            logits = self.safe()
        logp = torch.log_softmax(logits.double(), -1)
        kl = (self.safe_logp.exp() * (self.safe_logp - logp)).sum(-1)
        return self._score(logits), kl.clamp_min(0.0).numpy()


def _evidence(ctx, s: BottleneckSettings, sc: _Scorer, p: _Prompts, shared, kl, **more) -> dict:
    """layer_evidence on the scores; a category counts only with >= the rule's min_prompts held-out prompts."""
    b = ctx.boot
    return layer_evidence(sc.base, p.labels, sc.safe_base, shared, kl, categories=p.categories,
                          n_resamples=b.n_resamples, ci_level=b.ci_level, seed=ctx.seed,
                          min_prompts=max(2, s.rule.min_prompts), **more)


def _curve_entry(k: int, ev: dict) -> dict:
    return {"k": k, "mean_residual": ev["mean_residual"], "safe_kl": ev["safe_kl"],
            "residual": {q["category"]: q["residual"] for q in ev["per_category"]}, "counted": ev["counted"]}


def _curve(ctx, setup, s: BottleneckSettings, sc: _Scorer, p: _Prompts, ie, h: int, k: int, evidence: dict) -> list:
    """The shared set's residual refusal and safe KL at the curve sizes and at k (from ``evidence``), by size."""
    out = [_curve_entry(k, evidence)]
    for size in sorted({set_size(c, n_features(setup.space, h)) for c in s.curve_sizes} - {k}):
        mask = top_k(setup.space, ie, h, size)
        _, kl = sc.safe_run(setup.ablator, mask)
        out.append(_curve_entry(size, _evidence(ctx, s, sc, p, sc.toxic(setup.ablator, mask), kl)))
    return sorted(out, key=lambda c: c["k"])


def _layer(ctx, setup, s: BottleneckSettings, sc: _Scorer, p: _Prompts, ies: dict, inducer: NodeAblator,
           h: int) -> dict:
    space, hook = setup.space, setup.space.hooks[h]
    available = n_features(space, h)
    k = set_size(s.size, available)
    sets = hook_sets(space, h, k, ies, p.categories, s.n_random, ctx.seed)
    _, kl = sc.safe_run(setup.ablator, sets.shared)
    scores = {"shared": sc.toxic(setup.ablator, sets.shared),
              "per_category": np.stack([sc.toxic(setup.ablator, m) for m in sets.categories]),
              "random": np.stack([sc.toxic(setup.ablator, m) for m in sets.random]),
              "induced": sc.safe_run(inducer, sets.shared)[0]}
    evidence = _evidence(ctx, s, sc, p, scores["shared"], kl, per_category=scores["per_category"],
                         random=scores["random"], induced=scores["induced"])
    notes = [f"{name}: only {n} of the {k} nodes have |IE| > 0 at {hook} (the rest are ties at 0, lowest index first)"
             for name, n in sets.nonzero.items() if n < k]
    if isinstance(s.size, int) and k < s.size:
        notes.append(f"size {s.size} capped at the {available} feature nodes of {hook}")
    return {"hook": hook, "layer": parse_hook_name(hook, ctx.loaded.n_layers).layer, "k": k,
            "sets": sets.describe(space, p.categories), "evidence": evidence, "decision": s.rule.decide(evidence),
            "curve": _curve(ctx, setup, s, sc, p, ies[COMBINED], h, k, evidence), "notes": notes}


def _rankings(inputs, setup) -> tuple[dict, dict]:
    names = [COMBINED] + sorted({r["category"] for r in (inputs.attributions or {}).get("rows", [])} |
                                (set(inputs.circuits) - {COMBINED}))
    found = {n: ranking(inputs, setup.space, n) for n in names}
    found = {n: v for n, v in found.items() if v is not None}
    return {n: v[0] for n, v in found.items()}, {n: v[1] for n, v in found.items()}


def _empty(s: BottleneckSettings, reason: str, notes: list[str]) -> dict:
    return {"layers": [], "model": {"verdict": "inconclusive", "reason": reason, "summary": f"Inconclusive: {reason}.",
                                    "rule": MODEL_RULE},
            "settings": s.describe(), "plots": {}, "categories": [], "ie_source": {}, "n_prompts": {}, "notes": notes}


def run_bottleneck(ctx, setup, inputs, settings: BottleneckSettings, plot_dir: Path) -> dict:
    """The stage (module docstring): per hook the sets, their measurements, evidence and decision; the model verdict
    over the hooks; figures in ``plot_dir``. JSON-serialisable."""
    ies, sources = _rankings(inputs, setup)
    if COMBINED not in ies:
        return _empty(settings, "the discover run has neither attributions nor a combined circuit", [])
    p = _prompts(ctx, ies)
    if not p.categories or len(p.safe) < 2:
        return _empty(settings, f"{len(p.categories)} toxic categories with >= 2 held-out prompts and {len(p.safe)} "
                                f"safe prompts; need >= 1 and >= 2", p.notes)
    sc = _Scorer(ctx, setup, p)
    if not len(setup.split.filter(label="toxic")):
        raise ConfigError("bottleneck induction needs the toxic prompts of the discover run's discovery split; it has "
                          "none")
    inducer = NodeAblator(setup.space, setup.ablator.saes, setup.mean_node_values(["toxic"]))
    layers = [_layer(ctx, setup, settings, sc, p, ies, inducer, h) for h in range(len(setup.space.hooks))]
    model = model_verdict([(r["layer"], r["decision"], r["evidence"]) for r in layers])
    directions = direction_profile(ctx, setup, settings, sc, p,
                                   lambda shared, kl, **more: _evidence(ctx, settings, sc, p, shared, kl, **more))
    combined = across_bases({"features": (model, layers), "directions": None if directions["model"] is None else
                             (directions["model"], directions["layers"])})
    plots = bottleneck_plots(layers, model, settings.rule.dissociation_margin, Path(plot_dir))
    return {"layers": layers, "model": model, "directions": directions, "combined": combined,
            "settings": settings.describe(), "plots": plots,
            "categories": p.categories, "ie_source": {c: sources[c] for c in [COMBINED, *p.categories]},
            "n_prompts": {"toxic": {c: int((p.labels == i).sum()) for i, c in enumerate(p.categories)},
                          "safe": len(p.safe)}, "notes": p.notes + directions["notes"]}
