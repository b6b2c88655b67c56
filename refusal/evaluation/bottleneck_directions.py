"""The bottleneck stage's direction basis: the same evidence and rule (refusal/verdict) with residual directions in
place of SAE feature sets, so the answer does not rest on the SAE isolating the mechanism in a few latents (a shared
direction can be spread over many latents, or absorbed into category-specific ones).

At each hook, per node position p (the last n_positions prompt tokens), over the discover run's discovery split
(never the held-out evaluation split): the mean activation of the toxic prompts (pooled: t̄_p; category c's: c̄_p)
and of the safe prompts (s̄_p); activation = the SAE's reconstruction plus its error, i.e. the hook's activation.
    shared direction     r_p = t̄_p − s̄_p   (difference in means, no category labels)
    category c's         r_p = c̄_p − s̄_p
    random               ``n_random`` Gaussian directions per position (seeded)
Ablating a direction sets the activation's component along r̂_p to the safe mean's, s̄_p·r̂_p (mean ablation along
the direction, as feature sets are mean-ablated), at the node positions; induction sets the shared component of
safe prompts to the toxic mean's, t̄_p·r̂_p. Every set is one direction per position (rank 1), so sets have equal
size by construction.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from refusal.evaluation.interventions import ProjectionClamp, intervene
from refusal.model.hooks import parse_hook_name
from refusal.verdict import model_verdict


class _Clamps:
    """Runs forwards with one ProjectionClamp at the node positions (the bottleneck scorer's ablator interface)."""

    def __init__(self, n_positions: int):
        self.n_positions = n_positions

    @contextlib.contextmanager
    def ablated(self, model, clamp: ProjectionClamp):
        with intervene(model, [clamp], positions=self.n_positions):
            yield


def _unit(r: torch.Tensor) -> torch.Tensor:
    return r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _clamp(hook: str, r: torch.Tensor, to: torch.Tensor) -> ProjectionClamp:
    return ProjectionClamp(hook, r, (to * _unit(r)).sum(-1))


def hook_means(setup, labels: list[str], category: str | None = None) -> dict[str, torch.Tensor]:
    """{hook: [P, d]} the mean activation at the node positions over the discovery prompts with ``labels`` (and
    ``category``), from the setup's shared mean node values."""
    with torch.inference_mode():
        vals = setup.mean_node_values(labels, category)
        return {h: (setup.ablator.saes[h].decode(f) + e).float().cpu() for h, (f, e) in vals.items()}


def discovery_means(setup, categories: list[str]) -> tuple[dict, list[str]]:
    """({"toxic", "safe", and each category with discovery prompts: {hook: [P, d]}}, notes). The toxic mean is the
    mean over every toxic discovery prompt (count-weighted over the categories' prompt groups, each forwarded once
    per setup)."""
    toxic = setup.split.filter(label="toxic")
    out = {"safe": hook_means(setup, ["safe"]), "toxic": hook_means(setup, ["toxic"])}
    found = toxic.categories()
    out.update({c: hook_means(setup, ["toxic"], c) for c in found})
    notes = [f"directions: category {c} has no discovery-split prompts, so no direction of its own"
             for c in categories if c not in found]
    return out, notes


def direction_layer(ctx, setup, s, sc, p, h: int, means: dict, evidence_fn) -> dict | None:
    """One hook's direction sets, measurements, evidence (``evidence_fn``: the stage's layer_evidence call) and
    decision; None when a measured category has no direction."""
    hook = setup.space.hooks[h]
    if any(c not in means for c in p.categories):
        return None
    clamps = _Clamps(setup.space.n_positions)
    toxic, safe = means["toxic"][hook], means["safe"][hook]
    shared = toxic - safe
    gen = torch.Generator().manual_seed(int(ctx.seed) * 1000 + h)
    own = {c: means[c][hook] - safe for c in p.categories}
    rand = [torch.randn(shared.shape, generator=gen) for _ in range(s.n_random)]
    ablate_shared = _clamp(hook, shared, safe)
    _, kl = sc.safe_run(clamps, ablate_shared)
    scores = {"shared": sc.toxic(clamps, ablate_shared),
              "per_category": np.stack([sc.toxic(clamps, _clamp(hook, own[c], safe)) for c in p.categories]),
              "random": np.stack([sc.toxic(clamps, _clamp(hook, r, safe)) for r in rand]),
              "induced": sc.safe_run(clamps, _clamp(hook, shared, toxic))[0]}
    evidence = evidence_fn(scores["shared"], kl, per_category=scores["per_category"], random=scores["random"],
                           induced=scores["induced"])
    cos = {c: float((_unit(own[c]) * _unit(shared)).sum(-1).mean()) for c in p.categories}
    return {"hook": hook, "layer": parse_hook_name(hook, ctx.loaded.n_layers).layer, "evidence": evidence,
            "decision": s.rule.decide(evidence),
            "directions": {"shared_norm": [float(x) for x in shared.norm(dim=-1)],
                           "cosine_with_shared": cos, "n_random": s.n_random}}


def direction_profile(ctx, setup, s, sc, p, evidence_fn) -> dict:
    """{"layers", "model", "notes"} of the direction basis over every hook."""
    means, notes = discovery_means(setup, p.categories)
    layers = [direction_layer(ctx, setup, s, sc, p, h, means, evidence_fn) for h in range(len(setup.space.hooks))]
    if any(r is None for r in layers):
        return {"layers": [], "model": None, "notes": notes + ["directions: not measured"]}
    return {"layers": layers, "model": model_verdict([(r["layer"], r["decision"], r["evidence"]) for r in layers]),
            "notes": notes}
