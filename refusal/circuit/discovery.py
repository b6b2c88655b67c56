"""From prompts to circuits: per-prompt attributions of a prompt group, then one circuit per category of it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from refusal.circuit.attribution import Attributions, attribute
from refusal.circuit.circuit import Circuit
from refusal.circuit.edges import compute_edges
from refusal.circuit.model import CircuitModel
from refusal.circuit.nodes import NodeSpace
from refusal.circuit.patch import PatchSource
from refusal.circuit.select import Selection, select_edges, select_nodes
from refusal.data import PromptRecord


@dataclass
class PromptGroup:
    """Clean prompts of one kind (toxic or safe), their patch source and per-prompt attributions."""
    kind: str
    records: list[PromptRecord]
    source: PatchSource
    attributions: Attributions

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.records]

    def rows(self, category: str | None) -> list[int]:
        return [i for i, r in enumerate(self.records) if category is None or r.category == category]


def attribute_group(cm: CircuitModel, kind: str, records: list[PromptRecord], contrast: list[PromptRecord],
                    patch: str, method: str, aggregation: str, ig_steps: int, exact_max_nodes: int) -> PromptGroup:
    source = PatchSource(patch, cm, [r.prompt for r in contrast], [r.id for r in contrast])
    attr = attribute(cm, [r.prompt for r in records], source, method, aggregation, ig_steps, exact_max_nodes)
    return PromptGroup(kind, records, source, attr)


def circuit_from_rows(ie: torch.Tensor, m_clean: torch.Tensor, m_patch: torch.Tensor, space: NodeSpace,
                      selection: Selection) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(mean IE, selected mask, mean m_clean, mean m_patch) of a group of prompts' attribution rows."""
    mean = ie.double().mean(0)
    mc, mp = float(m_clean.mean()), float(m_patch.mean())
    return mean, select_nodes(mean, space.hook_index, selection, mc - mp), mc, mp


def make_circuit(cm: CircuitModel, group: PromptGroup, category: str | None, name: str, space: NodeSpace,
                 selection: Selection) -> Circuit:
    """The circuit of ``group``'s prompts of ``category`` (None: all of them), named ``name``, with edges."""
    rows = group.rows(category)
    a = group.attributions
    mean, selected, mc, mp = circuit_from_rows(a.ie[rows], a.m_clean[rows], a.m_patch[rows], space, selection)
    edges = compute_edges(cm, [group.records[i].prompt for i in rows], group.source, space, selected, index=rows)
    return Circuit(category=name, kind=group.kind, prompt_ids=[group.records[i].id for i in rows], ie=mean,
                   selected=selected, m_clean=mc, m_patch=mp, edges=select_edges(edges, selection, mc - mp))
