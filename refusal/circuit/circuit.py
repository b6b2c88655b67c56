"""A circuit: the selected nodes of one prompt group's mean IE vector, the edges among them, and its JSON file
``{model}_{category}_{toxic|safe}_circuit.json`` (model with ``/`` → ``-``). The JSON is deterministic: keys
sorted, nodes in model order (hook, feature, error last, position), edges by (source, target), floats rounded to
``SIG_DIGITS`` significant digits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from refusal.circuit.nodes import NodeSpace
from refusal.utils.io import write_json

SIG_DIGITS = 8
COMBINED = "all"  # category name of the circuit over every toxic prompt


def rnd(x: float | None) -> float | None:
    """Round to SIG_DIGITS significant digits; NaN/inf -> None (valid JSON)."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return float(f"{float(x):.{SIG_DIGITS}g}")


@dataclass
class Circuit:
    category: str
    kind: str
    prompt_ids: list[str]
    ie: torch.Tensor  # [n_nodes] mean IE over the prompts
    selected: torch.Tensor  # [n_nodes] bool
    m_clean: float
    m_patch: float
    edges: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def effect(self) -> float:
        return self.m_clean - self.m_patch

    @property
    def n_nodes(self) -> int:
        return int(self.selected.sum())

    def error_mass_fraction(self, space: NodeSpace) -> float | None:
        mag = self.ie.abs() * self.selected
        total = float(mag.sum())
        return float(mag[space.is_error].sum()) / total if total > 0 else None

    def to_json(self, space: NodeSpace, metric: dict, settings: dict, manifest: dict) -> dict:
        nodes = []
        for i in torch.nonzero(self.selected).flatten().tolist():
            hook, feature, position = space.describe(i)
            nodes.append({"id": space.node_id(i), "hook": hook, "layer": int(hook.split(".")[1]),
                          "feature": feature, "position": position, "attribution": rnd(float(self.ie[i]))})
        edges = [{"source": space.node_id(u), "target": space.node_id(d), "weight": rnd(w)}
                 for (u, d), w in sorted(self.edges.items())]
        return {
            "category": self.category,
            "kind": self.kind,
            "nodes": nodes,
            "edges": edges,
            "n_nodes": len(nodes),
            "n_edges": len(edges),
            "metric": {**metric, "clean": rnd(self.m_clean), "patch": rnd(self.m_patch), "effect": rnd(self.effect),
                       "n_prompts": len(self.prompt_ids)},
            "error_mass_fraction": rnd(self.error_mass_fraction(space)),
            "settings": settings,
            "manifest": {**manifest, "prompt_ids": list(self.prompt_ids)},
        }


def circuit_filename(model: str, category: str, kind: str) -> str:
    return f"{model.replace('/', '-')}_{category}_{kind}_circuit.json"


def write_circuit(directory: Path, model: str, circuit: Circuit, payload: dict) -> Path:
    path = Path(directory) / circuit_filename(model, circuit.category, circuit.kind)
    write_json(path, payload)
    return path
