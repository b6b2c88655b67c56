"""Circuit nodes as boolean masks over a discovery run's NodeSpace, their ablation, and random circuits of matched
size.

A mask is a bool tensor [n_nodes] in NodeSpace layout (refusal.circuit.nodes: hooks in model order; per hook the
features then the error node; with ``aggregation: none`` one entry per node position, position fastest). Ablating
a node sets it to its ablation value at the node positions (the last ``n_positions`` prompt tokens) through a
:class:`~refusal.evaluation.interventions.FeatureEdit`: the other nodes of the hook keep their (recomputed) values, so
a downstream node responds to an upstream ablation.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from refusal.circuit.neurons import NeuronEdit, is_neuron_basis
from refusal.circuit.nodes import ERROR, NodeSpace
from refusal.errors import ConfigError
from refusal.evaluation.interventions import FeatureEdit, intervene
from refusal.sae.model import SparseAutoencoder
from refusal.utils.io import stable_hash


def node_index(space: NodeSpace, hook: str, feature, position) -> int:
    """Index of the node (hook, feature or "error", position from the end or None) in ``space``."""
    if hook not in space.hooks:
        raise ConfigError(f"circuit node hook {hook!r} is not in the discovery node space {list(space.hooks)}")
    h = space.hooks.index(hook)
    feat = space.d_sae[h] if feature == ERROR else int(feature)
    if not 0 <= feat <= space.d_sae[h]:
        raise ConfigError(f"circuit node feature {feature!r} is out of range for {hook} (d_sae={space.d_sae[h]})")
    pos = 0 if space.per_position == 1 else int(position) + space.n_positions
    return space.offsets[h] + feat * space.per_position + pos


def circuit_mask(space: NodeSpace, nodes: list[dict]) -> Tensor:
    """Mask of a circuit JSON's ``nodes`` (dicts with hook, feature, position)."""
    mask = torch.zeros(space.n_nodes, dtype=torch.bool)
    for n in nodes:
        mask[node_index(space, n["hook"], n["feature"], n.get("position"))] = True
    return mask


def circuit_ie(space: NodeSpace, nodes: list[dict]) -> Tensor:
    """[n_nodes] float64 IE vector holding a circuit JSON's node attributions (0 elsewhere)."""
    ie = torch.zeros(space.n_nodes, dtype=torch.float64)
    for n in nodes:
        ie[node_index(space, n["hook"], n["feature"], n.get("position"))] = float(n.get("attribution") or 0.0)
    return ie


def _blocks(space: NodeSpace, mask: Tensor, h: int) -> Tensor:
    """[per_position, d_sae + 1] view of hook ``h``'s part of ``mask``."""
    return mask[space.hook_slice(h)].view(space.d_sae[h] + 1, space.per_position).T


def features_only(space: NodeSpace, mask: Tensor) -> Tensor:
    return mask & ~space.is_error


def counts_per_hook(space: NodeSpace, mask: Tensor) -> dict[str, dict[str, int]]:
    out = {}
    for h, hook in enumerate(space.hooks):
        b = _blocks(space, mask, h)
        out[hook] = {"features": int(b[:, :-1].sum()), "error": int(b[:, -1].sum())}
    return out


def seeded_generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(int(stable_hash(list(key)), 16) % (2**63 - 1))


def random_matched(space: NodeSpace, mask: Tensor, gen: torch.Generator) -> Tensor:
    """A random circuit with as many feature nodes per hook (× position) as ``mask``, features drawn uniformly
    among that hook's features; its error nodes are those of ``mask`` (the control varies which features, not
    whether the SAE's unexplained part is kept)."""
    out = mask & space.is_error
    for h in range(len(space.hooks)):
        sl = space.hook_slice(h)
        local = mask[sl] & ~space.is_error[sl]
        k = int(local.sum())
        if k:
            candidates = torch.nonzero(~space.is_error[sl]).flatten()
            pick = candidates[torch.randperm(len(candidates), generator=gen)[:k]]
            out[sl.start + pick] = True
    return out


@dataclass
class NodeAblator:
    """Ablate nodes of ``space`` to ``values[hook] = (f [P, d_sae], e [P, d])`` (means, or zeros)."""
    space: NodeSpace
    saes: dict[str, SparseAutoencoder]
    values: dict[str, tuple[Tensor, Tensor]]

    def __post_init__(self):
        for h, hook in enumerate(self.space.hooks):
            f, e = self.values[hook]
            if f.shape[-2:] != (self.space.n_positions, self.space.d_sae[h]):
                raise ConfigError(f"ablation values at {hook} have shape {tuple(f.shape)}; expected "
                                  f"[{self.space.n_positions}, {self.space.d_sae[h]}]")

    def interventions(self, ablate: Tensor) -> list[FeatureEdit]:
        out = []
        for h, hook in enumerate(self.space.hooks):
            b = _blocks(self.space, ablate, h)
            if not bool(b.any()):
                continue
            f, e = self.values[hook]
            if is_neuron_basis(self.saes[hook]):  # neurons: the error node is exactly 0, nothing to ablate
                out.append(NeuronEdit(hook, b[:, :-1], f))
                continue
            out.append(FeatureEdit(hook, self.saes[hook], b[:, :-1], "mean", value=f, error=b[:, -1], error_value=e))
        return out

    @contextlib.contextmanager
    def ablated(self, model: nn.Module, ablate: Tensor):
        """Run forwards / generation inside with the nodes of ``ablate`` ablated at the node positions."""
        with intervene(model, self.interventions(ablate), positions=self.space.n_positions):
            yield
