"""Rebuild what a discover run measured with: its node space, the SAEs spliced at its hooks, its metric, the
node ablation values and the circuits as node masks.

Ablation values (``evaluation.ablation``), computed on the discovery split's prompts (never the evaluation split),
at the node positions:
- ``mean_safe``: mean node values over the contrast prompts (the discover run's ``safe_labels``), the values the
  circuits' attributions were patched towards (circuit.patch=mean_safe);
- ``mean_all``: mean over every prompt of the discovery split (toxic and contrast; Marks et al. 2024);
- ``zero``: f = 0 and e = 0.
A discover run with ``circuit.basis: neurons`` (its saved settings) is rebuilt on the MLP-neuron basis of its
hooks (refusal/circuit/neurons.py): no SAEs, ablating a node sets that neuron to its ablation value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from refusal.circuit.metric import build_metric
from refusal.circuit.model import CircuitModel
from refusal.circuit.neurons import neuron_hooks
from refusal.circuit.nodes import NodeSpace
from refusal.circuit.patch import value_sums
from refusal.data import PromptSet
from refusal.circuit.saes import load_hooked_saes
from refusal.errors import ConfigError, check_choice
from refusal.evaluation.inputs import RunInputs
from refusal.evaluation.nodes import NodeAblator, circuit_mask
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import parse_hook_name
from refusal.model.loading import LoadedModel

ABLATIONS = ("mean_safe", "mean_all", "zero")


@dataclass
class CircuitSetup:
    space: NodeSpace
    formatter: ChatFormatter
    ablator: NodeAblator | None  # set once the ablation values are computed (they need the setup's model)
    masks: dict[str, Tensor]  # toxic circuit name -> node mask
    metric: Callable[[Tensor], Tensor]
    metric_desc: dict
    settings: dict  # the discover run's circuit settings
    cm: CircuitModel  # the model with the discover run's SAEs (or neuron basis) spliced at its hooks
    split: PromptSet  # the discover run's discovery split (every label)
    sums: dict = field(default_factory=dict, repr=False)  # (label, category) -> (n prompts, float64 value sums)

    def mean_node_values(self, labels: list[str] | None, category: str | None = None
                         ) -> dict[str, tuple[Tensor, Tensor]]:
        """{hook: (f [P, d_sae], e [P, d])}: mean node values at the node positions over the discovery split's
        prompts with ``labels`` (None: every prompt) and ``category`` (None: every one), on the model's device.
        Each (label, category) group of prompts is forwarded once per setup; a mean over several groups is their
        count-weighted sum (the faithfulness ablation, the bottleneck's toxic and per-category means share them)."""
        groups = sorted({(r.label, r.category) for r in self.split.filter(label=labels, category=category)})
        if not groups:
            raise ConfigError(f"the discovery split has no prompts with labels {labels} and category {category!r} "
                              "for mean node values")
        with torch.inference_mode():
            for g in groups:
                if g not in self.sums:
                    prompts = [r.prompt for r in self.split.filter(label=g[0], category=g[1])]
                    self.sums[g] = (len(prompts), value_sums(self.cm, prompts))
        n = sum(self.sums[g][0] for g in groups)
        device = next(self.cm.model.parameters()).device
        out = {}
        for h in self.sums[groups[0]][1]:
            f = sum(self.sums[g][1][h][0] for g in groups)
            e = sum(self.sums[g][1][h][1] for g in groups)
            out[h] = (f[0].div(n).float().to(device), e[0].div(n).float().to(device))
        return out


def _hooked(inputs: RunInputs, loaded: LoadedModel, space: NodeSpace, basis: str) -> dict:
    """What the discover run's nodes were spliced with: its SAEs, or (circuit.basis=neurons) the neuron basis."""
    if basis == "neurons":
        return neuron_hooks(loaded.model, [parse_hook_name(h, loaded.n_layers).layer for h in space.hooks],
                            loaded.n_layers)
    dirs = dict(inputs.sae_dirs)
    return load_hooked_saes([(h, dirs[h]) for h in space.hooks], loaded)


def build_circuit_setup(inputs: RunInputs, loaded: LoadedModel, formatter: ChatFormatter, ablation: str,
                        batch_size: int) -> CircuitSetup:
    check_choice("evaluation.ablation", ablation, ABLATIONS)
    summary = inputs.discovery
    manifest, settings = summary["manifest"], summary["settings"]
    ns = manifest["node_space"]
    space = NodeSpace(tuple(ns["hooks"]), tuple(ns["d_sae"]), int(ns["n_positions"]), ns["aggregation"])
    saes = _hooked(inputs, loaded, space, settings.get("basis", "sae"))
    for h, d in zip(space.hooks, space.d_sae):
        if saes[h].sae.d_sae != d:
            raise ConfigError(f"SAE at {h} has d_sae={saes[h].sae.d_sae} but the discover run had {d}")
    desc = summary["metric"]
    metric, metric_desc = build_metric(desc["name"], loaded.tokenizer, desc["refusal_token_ids"],
                                       desc.get("compliance_token_ids"))
    cm = CircuitModel(loaded.model, formatter, saes, settings["positions"], metric, batch_size)
    if cm.n_positions != space.n_positions:
        raise ConfigError(f"the chat template gives {cm.n_positions} node positions but the discover run had "
                          f"{space.n_positions}; evaluate with the discover run's model and system prompt")
    split = inputs.prompts.filter(split=manifest.get("discovery_split", settings.get("discovery_split")))
    masks = {name: circuit_mask(space, c["nodes"]) for name, c in inputs.circuits.items()}
    setup = CircuitSetup(space, formatter, None, masks, metric, metric_desc, settings, cm, split)
    if ablation == "zero":
        values = {h: (torch.zeros(space.n_positions, s.sae.d_sae, device=loaded.device),
                      torch.zeros(space.n_positions, s.sae.d_in, device=loaded.device)) for h, s in saes.items()}
    else:
        values = setup.mean_node_values(None if ablation == "mean_all" else list(settings["safe_labels"]))
    setup.ablator = NodeAblator(space, {h: s.sae for h, s in saes.items()}, values)
    return setup
