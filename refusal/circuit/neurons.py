"""The MLP-neuron basis (``circuit.basis: neurons``): nodes are the neurons of ``blocks.{L}.mlp.hook_post`` (the
input of down_proj, act(gate)·up) at the layers ``circuit.neurons.layers``, instead of SAE features.

A :class:`NeuronBasis` stands where an SAE stands (splice, CircuitModel, patch sources, edges, NodeAblator): its
encode and decode are the identity, so a "feature" is a neuron and the error node x − decode(encode(x)) is exactly
0 — the NodeSpace keeps its error slot per hook (the JSON layout stays the SAE one) but its IE is exactly 0, so it is
never selected and the error mass is 0.

The universal-neuron filter (``circuit.neurons.universal_top_k``, ``universal_fraction``): a neuron that is among
the ``universal_top_k`` largest |IE| of its hooked layer for more than ``universal_fraction`` of the diverse
prompts (the discovery split's toxic and contrast prompts) fires for everything (position, format, "any request"
neurons) and is excluded from every circuit. ``universal_top_k: 0`` or ``universal_fraction: 1`` disables it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from refusal.circuit.nodes import NodeSpace
from refusal.circuit.splice import HookedSAE
from refusal.config import integer, number, plain
from refusal.errors import ConfigError
from refusal.model.hooks import hook_width, parse_layers

BASES = ("sae", "neurons")
HOOK = "blocks.{}.mlp.hook_post"


class NeuronBasis(nn.Module):
    """The identity "SAE" of a neuron hook: f = x, x̂ = f (exact; the error node is 0)."""

    def __init__(self, width: int):
        super().__init__()
        self.d_in = self.d_sae = int(width)
        self.register_buffer("W_enc", torch.zeros(0), persistent=False)  # only its dtype is read

    def encode(self, x: Tensor) -> Tensor:
        return x.clone()  # a tensor of its own: splice's read mode makes it a leaf

    def decode(self, f: Tensor) -> Tensor:
        return f


def is_neuron_basis(sae) -> bool:
    return isinstance(sae, NeuronBasis)


@dataclass(frozen=True)
class NeuronSettings:
    layers: object  # a layer spec (refusal.model.hooks.parse_layers)
    universal_top_k: int
    universal_fraction: float

    @property
    def filter_enabled(self) -> bool:
        return self.universal_top_k > 0 and self.universal_fraction < 1


def neuron_settings(c) -> NeuronSettings:
    layers = plain(c.layers)
    if layers is None or isinstance(layers, (bool, float)):
        raise ConfigError(f"circuit.neurons.layers={layers!r} is not valid; use an int, a list, 'all', 'mid' or 'a-b'")
    return NeuronSettings(layers, integer("circuit.neurons.universal_top_k", c.universal_top_k, 0),
                          number("circuit.neurons.universal_fraction", c.universal_fraction, 0, 1))


def neuron_hooks(model: nn.Module, layers, n_layers: int) -> dict[str, HookedSAE]:
    """{``blocks.{L}.mlp.hook_post``: HookedSAE(NeuronBasis)} for the layers of the spec, in model order."""
    device = next(model.parameters()).device
    out = {}
    for layer in parse_layers(layers, n_layers):
        hook = HOOK.format(layer)
        out[hook] = HookedSAE(hook, NeuronBasis(hook_width(model, hook)).to(device), "neurons", "")
    return out


def universal_mask(ie: Tensor, space: NodeSpace, top_k: int, fraction: float) -> Tensor:
    """[n_nodes] bool: nodes among the ``top_k`` largest |IE| of their hook for more than ``fraction`` of the
    prompts (rows of ``ie`` [n_prompts, n_nodes]); all False when the filter is disabled or there are no rows."""
    out = torch.zeros(space.n_nodes, dtype=torch.bool)
    if top_k <= 0 or fraction >= 1 or len(ie) == 0:
        return out
    mag = ie.abs().float()
    for h in range(len(space.hooks)):
        sl = space.hook_slice(h)
        part = mag[:, sl]
        k = min(top_k, part.shape[1])
        idx = part.topk(k, dim=1).indices
        hits = torch.zeros_like(part).scatter_(1, idx, 1.0) * (part > 0)
        out[sl] = hits.mean(0) > fraction
    return out


@dataclass
class NeuronEdit:
    """Set the neurons ``features`` (bool [P, d]) at ``hook`` to ``value`` ([P, d]); the error node is a no-op."""
    hook: str
    features: Tensor
    value: Tensor

    def edit(self, x: Tensor) -> Tensor:
        mask = self.features.to(device=x.device, dtype=torch.bool)
        return torch.where(mask, self.value.to(device=x.device, dtype=x.dtype), x)
