"""Node (and edge) selection from a circuit's mean IE vector. A node is kept when it passes every enabled rule:

- ``node_threshold``: |IE| ≥ threshold (``threshold_mode: absolute``) or ≥ threshold · |m(clean) − m(patch)|
  (``relative``: a fraction of the total effect being explained);
- ``top_n_per_layer``: among the n largest |IE| of its hooked point;
- ``cumulative_fraction``: among the fewest largest-|IE| nodes (over all hooks) whose |IE| sum reaches that
  fraction of the total |IE| mass.
Nodes with IE exactly 0 are never kept, nor the nodes of ``exclude`` (the neuron basis's universal neurons,
refusal/circuit/neurons.py). Null disables a rule; at least one rule must be enabled.
``edge_threshold`` uses the same ``threshold_mode``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from refusal.errors import ConfigError, check_choice

THRESHOLD_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class Selection:
    node_threshold: float | None = None
    threshold_mode: str = "relative"
    top_n_per_layer: int | None = None
    cumulative_fraction: float | None = None
    edge_threshold: float = 0.0
    exclude: torch.Tensor | None = field(default=None, compare=False, repr=False)  # [n_nodes] bool: never kept

    def __post_init__(self):
        check_choice("circuit.threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        _check_number("circuit.node_threshold", self.node_threshold, allow_none=True)
        _check_number("circuit.edge_threshold", self.edge_threshold, allow_none=False)
        n = self.top_n_per_layer
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"circuit.top_n_per_layer={n!r} is not valid; use an int >= 1 or null")
        c = self.cumulative_fraction
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1):
            raise ConfigError(f"circuit.cumulative_fraction={c!r} is not valid; use a number in (0, 1] or null")
        if self.node_threshold is None and n is None and c is None:
            raise ConfigError("circuit.node_threshold, top_n_per_layer and cumulative_fraction are all null; "
                              "enable at least one node selection rule")

    def scale(self, effect: float) -> float:
        """What thresholds are multiplied by: 1 (absolute) or |m(clean) − m(patch)| (relative)."""
        return 1.0 if self.threshold_mode == "absolute" else abs(float(effect))


def _check_number(name, value, allow_none: bool):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name}={value!r} is not valid; use a number >= 0" + (" or null" if allow_none else ""))


def select_nodes(ie: torch.Tensor, hook_index: torch.Tensor, sel: Selection, effect: float) -> torch.Tensor:
    """[n_nodes] bool mask of the kept nodes for a mean IE vector ``ie`` ([n_nodes])."""
    mag = ie.abs().double()
    keep = mag > 0
    if sel.exclude is not None:
        keep &= ~sel.exclude.to(keep.device)
    if sel.node_threshold is not None:
        keep &= mag >= sel.node_threshold * sel.scale(effect)
    if sel.top_n_per_layer is not None:
        top = torch.zeros_like(keep)
        for h in hook_index.unique().tolist():
            idx = torch.nonzero(hook_index == h).flatten()
            order = _ranked(mag[idx])
            top[idx[order[: sel.top_n_per_layer]]] = True
        keep &= top
    if sel.cumulative_fraction is not None:
        order = _ranked(mag)
        csum = mag[order].cumsum(0)
        total = float(csum[-1]) if len(csum) else 0.0
        n = int(torch.searchsorted(csum, torch.tensor(sel.cumulative_fraction * total, dtype=csum.dtype))) + 1
        n = min(n, len(order))
        cum = torch.zeros_like(keep)
        cum[order[:n]] = True
        keep &= cum
    return keep


def _ranked(mag: torch.Tensor) -> torch.Tensor:
    """Indices by decreasing magnitude, ties by index (deterministic)."""
    return torch.from_numpy(np.lexsort((np.arange(len(mag)), -mag.numpy())))


def select_edges(edges: dict[tuple[int, int], float], sel: Selection, effect: float) -> dict[tuple[int, int], float]:
    thr = sel.edge_threshold * sel.scale(effect)
    return {k: w for k, w in edges.items() if abs(w) >= thr and w != 0}
