"""The node sets of the bottleneck stage (refusal/evaluation/bottleneck.py) at one hook.

Ranking: a set's IE vector is the mean IE over the discover run's per-prompt attributions of its prompts (all toxic
prompts for the shared set, i.e. the COMBINED circuit's attributions, pooled toxic vs safe without category labels;
one category's toxic prompts for a category set), the source faithfulness ranks by; when the run kept no
attributions, the circuit JSON's node attributions (nodes outside the circuit then have IE 0). The top-k feature
nodes of one hook by |mean IE| (error nodes never; ties: lower node index first). With ``aggregation: none`` a node is
one feature at one position, and k counts those nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from refusal.circuit.circuit import COMBINED
from refusal.config import integer
from refusal.errors import ConfigError
from refusal.circuit.nodes import NodeSpace
from refusal.evaluation.inputs import mean_ie
from refusal.evaluation.nodes import circuit_ie, random_matched, seeded_generator


def ranking(inputs, space: NodeSpace, name: str) -> tuple[Tensor, str] | None:
    """(mean IE [n_nodes], source) of the circuit ``name`` (a category or COMBINED), or None when the discover run
    has neither attributions of its prompts nor its circuit JSON."""
    found = mean_ie(inputs, None if name == COMBINED else name)
    if found is not None:
        return found[0].cpu(), "attributions"
    circuit = inputs.circuits.get(name)
    if circuit is None:
        return None
    return circuit_ie(space, circuit["nodes"]), "circuit_json"


def n_features(space: NodeSpace, h: int) -> int:
    """Feature nodes at hook ``h`` (features × positions with ``aggregation: none``)."""
    return space.d_sae[h] * space.per_position


def size_value(key: str, value) -> int | float:
    """A set size from the config: an int >= 1 (feature nodes) or a fraction in (0, 1) of the hook's feature nodes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return integer(key, value, 1)
    if isinstance(value, float) and 0 < value < 1:
        return value
    raise ConfigError(f"{key}={value!r} is not valid; use an int >= 1 (feature nodes per set) or a fraction in "
                      f"(0, 1) of the hook's feature nodes")


def set_size(size: int | float, available: int) -> int:
    """k at a hook with ``available`` feature nodes: an int (capped at ``available``) or a fraction of them (>= 1)."""
    k = size if isinstance(size, int) else max(1, round(size * available))
    return min(k, available)


def top_k(space: NodeSpace, ie: Tensor, h: int, k: int) -> Tensor:
    """[n_nodes] mask of the k feature nodes of hook ``h`` with the largest |ie|."""
    sl = space.hook_slice(h)
    feats = torch.nonzero(~space.is_error[sl]).flatten()
    order = torch.sort(ie[sl][feats].abs().double(), descending=True, stable=True).indices
    mask = torch.zeros(space.n_nodes, dtype=torch.bool)
    mask[sl.start + feats[order[:k]]] = True
    return mask


def features(space: NodeSpace, mask: Tensor) -> list:
    """The nodes of ``mask`` as feature indices ([feature, position from the end] with ``aggregation: none``)."""
    out = []
    for i in torch.nonzero(mask).flatten().tolist():
        _, feature, position = space.describe(i)
        out.append(feature if position is None else [feature, position])
    return out


@dataclass
class HookSets:
    """The sets of one hook: shared (COMBINED), one per category (in the stage's category order), random."""
    h: int
    k: int
    shared: Tensor
    categories: list[Tensor]
    random: list[Tensor]
    nonzero: dict  # set name -> how many of its nodes have |IE| > 0 (fewer than k: the rest are ties at 0)

    def describe(self, space: NodeSpace, names: list[str]) -> dict:
        return {"shared": features(space, self.shared),
                "categories": {c: features(space, m) for c, m in zip(names, self.categories)},
                "random": [features(space, m) for m in self.random], "nonzero_ie": self.nonzero}


def hook_sets(space: NodeSpace, h: int, k: int, ies: dict[str, Tensor], names: list[str], n_random: int,
              seed: int) -> HookSets:
    """Sets of size k at hook ``h`` from ``ies`` (COMBINED and every category of ``names``); random sets drawn
    uniformly among the hook's feature nodes, seeded by (seed, hook, draw)."""
    shared = top_k(space, ies[COMBINED], h, k)
    cats = [top_k(space, ies[c], h, k) for c in names]
    rand = [random_matched(space, shared, seeded_generator(seed, "bottleneck", space.hooks[h], r))
            for r in range(n_random)]
    nonzero = {name: int((ies[name][m] != 0).sum()) for name, m in zip([COMBINED, *names], [shared, *cats])}
    return HookSets(h, k, shared, cats, rand, nonzero)
