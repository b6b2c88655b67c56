"""Edges between the selected nodes of consecutive hooked points (DESIGN §3 Edges).

edge(u → d) = (∂m/∂d) · (∂d/∂u) · Δu, averaged over prompts, with ∂m/∂d read at the clean run (the AtP
linearisation, whatever the node attribution method) and Δu = u_clean − u_patch. Per batch: one forward + backward
for ∂m/∂d of every node, then one forward in which every hooked point both *observes* its nodes as functions of
the previous hooked point's nodes and replaces them by fresh leaves (so each edge layer has its own graph), then
one batched vector-Jacobian product per downstream hook (``autograd.grad(is_grads_batched=True)``, a cotangent per
selected downstream node). Downstream positions are summed (a node's IE is carried by all its positions);
upstream positions are aggregated like the node attributions, so with ``aggregation: sum`` the edges out of u
into *all* nodes of the next hook sum to u's AtP IE.
"""
from __future__ import annotations

import logging

import torch

from refusal.circuit.model import CircuitModel
from refusal.circuit.nodes import NodeSpace, aggregate
from refusal.circuit.patch import PatchSource

log = logging.getLogger(__name__)


def _downstream_scalars(space: NodeSpace, h: int, local: torch.Tensor, f, e, gf, ge) -> torch.Tensor:
    """[k] Σ_b Σ_q ∂m/∂d · d for each selected node of hook h (local indices), positions per node if kept."""
    P, d_sae = space.n_positions, space.d_sae[h]
    per = torch.cat([gf * f, (ge * e).sum(-1, keepdim=True)], -1).sum(0)  # [P, d_sae + 1]
    feat, pos = local // space.per_position, local % space.per_position
    if space.aggregation == "none":
        return per[pos, feat]
    return per.sum(0)[feat]


def _batched_vjp(s: torch.Tensor, inputs: tuple[torch.Tensor, ...]):
    """[k, *input.shape] gradients of each entry of ``s`` w.r.t. ``inputs``: one vmapped backward; where an op
    has no batching rule (some fused attention kernels), one backward per entry (same values)."""
    eye = torch.eye(len(s), dtype=s.dtype, device=s.device)
    try:
        return torch.autograd.grad(s, inputs, grad_outputs=eye, is_grads_batched=True, retain_graph=True,
                                   allow_unused=True)
    except RuntimeError as e:
        log.debug("batched VJP unavailable (%s); one backward per downstream node", str(e).splitlines()[0])
    rows = [torch.autograd.grad(s[i], inputs, retain_graph=True, allow_unused=True) for i in range(len(s))]
    return tuple(None if rows[0][j] is None else torch.stack([r[j] for r in rows]) for j in range(len(inputs)))


def compute_edges(cm: CircuitModel, prompts: list[str], source: PatchSource, space: NodeSpace,
                  selected: torch.Tensor, index: list[int] | None = None) -> dict[tuple[int, int], float]:
    """{(upstream node, downstream node): mean edge weight} over ``prompts`` for every pair of selected nodes
    in consecutive hooks (global node indices). ``index[i]``: the row of ``prompts[i]`` in the clean prompt list
    ``source`` pairs by (default: i)."""
    hooks = cm.hooks
    sel = [torch.nonzero(selected[space.hook_slice(h)]).flatten() for h in range(len(hooks))]
    pairs = [h for h in range(len(hooks) - 1) if len(sel[h]) and len(sel[h + 1])]
    if not pairs:
        return {}
    total = {h: torch.zeros(len(sel[h + 1]), len(sel[h]), dtype=torch.float64) for h in pairs}
    first, last = min(pairs), max(pairs) + 1
    for rows, enc in cm.batches(prompts):
        _, clean, grads = cm.read(enc)
        patch = source.values([index[r] for r in rows] if index is not None else rows, clean)
        leaves = {hooks[h]: tuple(t.clone().requires_grad_(True) for t in clean[hooks[h]]) for h in range(first, last)}
        modes = {hooks[first]: "set", **{hooks[h]: "relay" for h in range(first + 1, last)}, hooks[last]: "observe"}
        _, obs = cm.run(enc, modes, leaves, grad=True)
        for h in pairs:
            up, down = hooks[h], hooks[h + 1]
            s = _downstream_scalars(space, h + 1, sel[h + 1], *obs[down], *grads[down])
            k = len(s)
            gf, ge = _batched_vjp(s, leaves[up])
            (fc, ec), (fp, ep) = clean[up], patch[up]
            gf = torch.zeros(k, *fc.shape, device=fc.device) if gf is None else gf
            ge = torch.zeros(k, *ec.shape, device=ec.device) if ge is None else ge
            per_pos = torch.cat([gf * (fc - fp), (ge * (ec - ep)).sum(-1, keepdim=True)], -1)  # [k, B, P, n+1]
            node_vals = aggregate(per_pos, space.aggregation)  # [k, B, n_up]
            total[h] += node_vals[..., sel[h]].sum(1).double().cpu()
    out = {}
    for h in pairs:
        w = total[h] / len(prompts)
        for i, d in enumerate(sel[h + 1].tolist()):
            for j, u in enumerate(sel[h].tolist()):
                out[(space.offsets[h] + u, space.offsets[h + 1] + d)] = float(w[i, j])
    return out
