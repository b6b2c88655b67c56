"""Similarity of category circuits, over their SAE-feature nodes (error nodes, one per hooked point, say
nothing about which features a category uses and are left out; their share of the IE mass is reported per
circuit instead).

Sizes are equalised first: each circuit is cut to its top-n nodes by |IE|, n = the smallest circuit's size. Then
for every pair of categories A, B:
- ``jaccard``: |A ∩ B| / |A ∪ B|;
- ``weighted_jaccard``: Σ min(p_A, p_B) / Σ max(p_A, p_B) with p = a circuit's |IE| mass distribution (|IE| on
  its own nodes, 0 elsewhere, normalised to sum 1, so a category's overall effect size does not count);
- ``cosine``: cosine of the two signed mean-IE vectors over the union of their nodes.
The shared core is the set of feature nodes in every category's (selected, not equalised) circuit; a category's
specific nodes are the rest of its circuit; ``core_mass`` is the fraction of a circuit's feature |IE| mass on the
core.
"""
from __future__ import annotations

import numpy as np
import torch

SIMILARITIES = ("jaccard", "weighted_jaccard", "cosine")


def _top_n(mag: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    idx = torch.nonzero(mask).flatten()
    order = np.lexsort((idx.numpy(), -mag[idx].double().numpy()))
    out = torch.zeros_like(mask)
    out[idx[torch.from_numpy(order[:n])]] = True
    return out


def equalise(ie: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """ie, masks [C, N] -> (masks cut to the top-n by |IE|, n = smallest circuit size)."""
    n = int(masks.sum(1).min()) if len(masks) else 0
    return torch.stack([_top_n(ie[c].abs(), masks[c], n) for c in range(len(masks))]), n


def similarities(ie: torch.Tensor, masks: torch.Tensor) -> dict[str, np.ndarray]:
    """[C, C] matrices (diagonal 1; NaN off the diagonal when the equalised size is 0) over feature nodes
    ``ie``/``masks`` [C, N], sizes equalised first."""
    eq, n = equalise(ie, masks)
    C = len(ie)
    cols = eq.any(0)
    v, e = ie[:, cols].double(), eq[:, cols]
    mass = v.abs() * e
    p = mass / mass.sum(1, keepdim=True).clamp_min(1e-300)
    out = {k: np.eye(C) for k in SIMILARITIES}
    for a in range(C):
        for b in range(a + 1, C):
            if n == 0:
                vals = dict.fromkeys(SIMILARITIES, float("nan"))
            else:
                inter, union = (e[a] & e[b]).sum(), (e[a] | e[b]).sum()
                u = e[a] | e[b]
                va, vb = v[a, u], v[b, u]
                denom = float(va.norm() * vb.norm())
                vals = {"jaccard": float(inter / union),
                        "weighted_jaccard": float(torch.minimum(p[a], p[b]).sum() / torch.maximum(p[a], p[b]).sum()),
                        "cosine": float(va @ vb) / denom if denom > 0 else float("nan")}
            for k, val in vals.items():
                out[k][a, b] = out[k][b, a] = val
    out["n_equalised"] = n
    return out


def shared_core(ie: torch.Tensor, masks: torch.Tensor) -> dict:
    """Core mask [N], specific masks [C, N], core mass fraction per category [C] (NaN for an empty circuit)."""
    core = masks.all(0)
    mass = ie.abs().double() * masks
    total = mass.sum(1)
    core_mass = torch.where(total > 0, (mass * core).sum(1) / total.clamp_min(1e-300), torch.nan)
    return {"core": core, "specific": masks & ~core, "core_mass": core_mass.numpy()}


def mean_offdiag(m: np.ndarray) -> float:
    C = len(m)
    if C < 2:
        return float("nan")
    return float(m[~np.eye(C, dtype=bool)].mean())
