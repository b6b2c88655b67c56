"""Faithfulness and completeness of circuits over a node-threshold sweep (Marks et al. 2024; DESIGN §3).

m(C) is the mean metric over held-out prompts with every node *outside* C ablated (features and error nodes
alike, at the node positions, to the ablation values). M is the full model (nothing ablated) and ∅ the empty
circuit (everything ablated). Then

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))           1 = explains all of the effect
    completeness(C) = (m(M∖C) − m(∅)) / (m(M) − m(∅))         m(M∖C): C's own nodes ablated; low is good

faithfulness(M) = 1, faithfulness(∅) = 0, completeness(M) = 0, completeness(∅) = 1 by construction. Values are
raw: never clamped (below 0 or above 1 happens and is informative); NaN when m(M) = m(∅).

The sweep ranks nodes by the circuit's mean |IE| (from the discovery run's per-prompt attributions) and keeps
those at or above each node threshold (the discovery run's threshold_mode: absolute, or relative to
|m(clean) − m(patch)|), with no other selection rule; node sets equal to an earlier one are skipped. Each point
gets ``n_random`` random circuits with the same number of feature nodes per hook (and the same error nodes) as
the control.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from refusal.circuit.circuit import COMBINED
from refusal.circuit.nodes import NodeSpace
from refusal.circuit.select import Selection, select_nodes
from refusal.evaluation.inputs import mean_ie
from refusal.evaluation.nodes import NodeAblator, circuit_ie, counts_per_hook, random_matched, seeded_generator
from refusal.circuit.plots import faithfulness_plot
from refusal.evaluation.prefix import PrefixCachedLogits, first_layer
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import decoder_layers


class AblationMetric:
    """m(kept nodes): the mean metric over fixed prompts with every node not in ``keep`` ablated. Values are
    remembered per mask, so a mask met again (a circuit's own nodes equal to a sweep point, as with the discover
    run's node_threshold among the thresholds) costs no forward."""

    def __init__(self, model: nn.Module, formatter: ChatFormatter, ablator: NodeAblator, prompts: list[str],
                 metric: Callable[[Tensor], Tensor], batch_size: int):
        self.model, self.ablator, self.metric = model, ablator, metric
        start = first_layer(ablator.space.hooks, len(decoder_layers(model)))
        self.logits = PrefixCachedLogits(model, formatter, prompts, batch_size, start, ablator.space.n_positions)
        self.n_prompts = len(prompts)
        self._values: dict[bytes, float] = {}

    @torch.inference_mode()
    def per_prompt(self, keep: Tensor) -> Tensor:
        with self.ablator.ablated(self.model, ~keep):
            return self.metric(self.logits()).double()

    def __call__(self, keep: Tensor) -> float:
        key = keep.to(device="cpu", dtype=torch.bool).numpy().tobytes()
        if key not in self._values:
            self._values[key] = float(self.per_prompt(keep).mean())
        return self._values[key]


def ratio(value: float, empty: float, full: float) -> float:
    """(value − m(∅)) / (m(M) − m(∅)), unclamped; NaN when m(M) = m(∅)."""
    denom = full - empty
    return (value - empty) / denom if denom != 0 else float("nan")


def score_circuit(m: Callable[[Tensor], float], keep: Tensor, empty: float, full: float) -> dict:
    """Faithfulness (C kept) and completeness (C ablated) of one circuit mask."""
    m_c, m_comp = m(keep), m(~keep)
    return {"m_circuit": m_c, "m_complement": m_comp, "faithfulness": ratio(m_c, empty, full),
            "completeness": ratio(m_comp, empty, full)}


def sweep_masks(space: NodeSpace, ie: Tensor, effect: float, thresholds: list[float], threshold_mode: str
                ) -> list[tuple[float, Tensor]]:
    """(threshold, mask) per threshold (descending), masks equal to an earlier one dropped."""
    out, seen = [], set()
    for t in sorted(thresholds, reverse=True):
        mask = select_nodes(ie, space.hook_index, Selection(node_threshold=float(t), threshold_mode=threshold_mode),
                            effect)
        key = tuple(torch.nonzero(mask).flatten().tolist())
        if key not in seen:
            seen.add(key)
            out.append((float(t), mask))
    return out


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    if len(a) == 0:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {"mean": float(np.mean(a)), "sd": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
            "min": float(np.min(a)), "max": float(np.max(a))}


def faithfulness_curve(m: Callable[[Tensor], float], space: NodeSpace, ie: Tensor, effect: float,
                       thresholds: list[float], threshold_mode: str, n_random: int, seed: int, name: str,
                       discovered: Tensor | None = None) -> dict:
    """Curve points (node count, faithfulness, completeness, random controls) for one circuit's mean IE ``ie``;
    ``discovered``: the circuit's own node mask, scored as a separate point (the sweep point itself, random
    controls included, when a threshold selects the same nodes)."""
    n = space.n_nodes
    full, empty = m(torch.ones(n, dtype=torch.bool)), m(torch.zeros(n, dtype=torch.bool))

    def point(mask: Tensor, key) -> dict:
        p = {"n_nodes": int(mask.sum()), "n_error_nodes": int((mask & space.is_error).sum()),
             "per_hook": counts_per_hook(space, mask), **score_circuit(m, mask, empty, full)}
        rand = [score_circuit(m, random_matched(space, mask, seeded_generator(seed, name, key, r)), empty, full)
                for r in range(n_random)]
        p["random"] = {"n": n_random, "faithfulness": _summary([r["faithfulness"] for r in rand]),
                       "completeness": _summary([r["completeness"] for r in rand])}
        return p

    masks = sweep_masks(space, ie, effect, thresholds, threshold_mode)
    points = [{"threshold": t, **point(mask, t)} for t, mask in masks]
    own = None
    if discovered is not None:  # the sweep point with the same nodes (random controls included), else its own
        same = [p for p, (_, mask) in zip(points, masks) if torch.equal(mask.cpu(), discovered.cpu().bool())]
        own = {k: v for k, v in same[0].items() if k != "threshold"} if same else point(discovered, "discovered")
    points.sort(key=lambda p: p["n_nodes"])
    return {"m_full": full, "m_empty": empty, "effect": effect, "n_prompts": getattr(m, "n_prompts", None),
            "points": points, "discovered": own}


def run_faithfulness(ctx, setup, inputs, thresholds: list[float], n_random: int, plot_path: Path) -> dict:
    """Curves for every toxic circuit of the discover run on the evaluation split's toxic prompts of its category
    (all of them for the combined circuit); the PNG at ``plot_path``."""
    toxic = ctx.prompts.filter(label="toxic")
    mode = setup.settings.get("threshold_mode", "relative")
    curves, skipped = {}, {}
    for name, mask in setup.masks.items():
        category = None if name == COMBINED else name
        records = list(toxic if category is None else toxic.filter(category=category))
        if not records:
            skipped[name] = "no toxic prompts of this category in the evaluation split"
            continue
        found = mean_ie(inputs, category)
        if found is not None:
            ie, effect, source = found[0], found[1], "attributions"
        else:
            circuit = inputs.circuits[name]
            ie, effect, source = circuit_ie(setup.space, circuit["nodes"]), circuit["metric"]["effect"] or 0.0, \
                "circuit_json"
        m = AblationMetric(ctx.model, setup.formatter, setup.ablator, [r.prompt for r in records], setup.metric,
                           ctx.batch_size)
        curve = faithfulness_curve(m, setup.space, ie, effect, thresholds, mode, n_random, ctx.seed, name, mask)
        curves[name] = {**curve, "ie_source": source}
    plot = str(faithfulness_plot(curves, plot_path)) if curves else None
    return {"curves": curves, "skipped": skipped, "plot": plot, "metric": setup.metric_desc,
            "thresholds": list(thresholds), "threshold_mode": mode, "n_random": n_random}
